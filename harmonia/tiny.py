"""Tiny models built in code: the real architectures, randomly initialised, saved as snapshots.

No test, CI notebook or offline demo may need the network or real weights. Each builder
here makes a model of an engine's architecture family with a few thousand parameters, from
a fixed seed, and saves it the way the hub would serve it (config, safetensors, tokenizer,
preprocessor config). The same seed and the same library versions give the same bytes.

A random-init EnCodec has all-zero codebooks, so every code would decode to the same audio;
the builders fill the codebooks so that generated audio depends on the generated tokens.

This module knows how to build models; snapshots.py knows how to store them.
"""

from __future__ import annotations

import json
import string
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import torch

from harmonia.engines.base import quiet_transformers
from harmonia.errors import BuilderError
from harmonia.inventory import Inventory, Source
from harmonia.snapshots import install_built
from harmonia.workbench import Workbench, check_name

# MusicGen's audio side at its real rates (32 kHz, 50 frames/s, 4 codebooks) with tiny widths.
SAMPLE_RATE = 32_000
UPSAMPLING = (8, 5, 4, 4)  # hop 640 samples -> 50 frames/s
CODEBOOK_SIZE = 64  # 6 bits; 4 quantizers need 1000 * bw // (50 * 6) = 4 -> bw = 1.2 kbps
NUM_CODEBOOKS = 4
MAX_POSITIONS = 256  # 5.12 s of tokens: short enough that long-form code paths get exercised
_VOCAB_CHARS = string.ascii_lowercase + string.digits + " .,;:!?'-/#&()"


@dataclass(frozen=True)
class TinyBuild:
    """What `build_tiny` produced."""

    name: str
    path: Path
    inventory: Inventory


def _versions(builder: str = "") -> dict[str, str]:
    if builder in AUDIOCRAFT_BUILDERS:  # built in the worker: its versions
        from harmonia.engines.audiocraft import Worker

        found = Worker.shared().hello()["versions"]
        return {pkg: found[pkg] for pkg in ("torch", "audiocraft", "numpy", "omegaconf")}
    packages = ["torch", "transformers", "safetensors", "tokenizers"]
    if builder in ("stable-audio", "ace-step", "wan"):
        packages.append("diffusers")
    if builder == "demucs":
        packages.append("demucs")
    return {pkg: version(pkg) for pkg in packages}


def _t5_tokenizer():
    """A T5 (Unigram) tokenizer over single characters, built offline from an in-memory vocabulary."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(c, -3.0) for c in _VOCAB_CHARS if c != " "]
    vocab += [(f"▁{c}", -2.5) for c in string.ascii_lowercase]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def _encodec_config():
    from transformers import EncodecConfig

    return EncodecConfig(
        sampling_rate=SAMPLE_RATE,
        audio_channels=1,
        target_bandwidths=[1.2],
        upsampling_ratios=list(UPSAMPLING),
        codebook_size=CODEBOOK_SIZE,
        hidden_size=16,
        num_filters=4,
        num_residual_layers=1,
        num_lstm_layers=1,
        use_causal_conv=False,
        normalize=False,
    )


def _t5_config(vocab_size: int):
    from transformers import T5Config

    return T5Config(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )


def _decoder_kwargs(channels: int = 1) -> dict:
    """MusicGen stereo has 2 x 4 codebooks (left and right interleaved) over the same mono EnCodec."""
    return dict(
        vocab_size=CODEBOOK_SIZE,
        pad_token_id=CODEBOOK_SIZE,
        bos_token_id=CODEBOOK_SIZE,
        max_position_embeddings=MAX_POSITIONS,
        num_hidden_layers=2,
        ffn_dim=64,
        num_attention_heads=4,
        hidden_size=32,
        num_codebooks=NUM_CODEBOOKS * channels,
        audio_channels=channels,
    )


def _save_model(model, out: Path) -> None:
    """Sharpen the heads, fill the EnCodec codebooks (random init leaves them zero), set defaults, save."""
    model.eval()
    # Random heads give nearly uniform logits, so sampling would ignore the conditioning;
    # larger heads make the token choice depend on the prompt and melody, as in a trained model.
    with torch.no_grad():
        for head in model.decoder.lm_heads:
            head.weight.normal_(0.0, 1.0)
    for layer in model.audio_encoder.quantizer.layers:
        codebook = layer.codebook
        codebook.embed.copy_(torch.randn_like(codebook.embed))
        codebook.embed_avg.copy_(codebook.embed)
        codebook.cluster_size.fill_(1.0)
    gc = model.generation_config
    gc.decoder_start_token_id = gc.pad_token_id = gc.bos_token_id = CODEBOOK_SIZE
    gc.do_sample = True
    gc.guidance_scale = 3.0
    gc.max_length = MAX_POSITIONS
    gc.top_k = 50
    model.save_pretrained(out)


def build_musicgen(out: Path, channels: int = 1) -> None:
    """transformers MusicGen (text-to-music): tiny T5 + tiny EnCodec + tiny decoder, mono or stereo."""
    from transformers import (
        EncodecFeatureExtractor,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        MusicgenProcessor,
    )

    tokenizer = _t5_tokenizer()
    config = MusicgenConfig(
        text_encoder=_t5_config(len(tokenizer)),
        audio_encoder=_encodec_config(),
        decoder=MusicgenDecoderConfig(**_decoder_kwargs(channels)),
    )
    _save_model(MusicgenForConditionalGeneration(config), out)
    feature_extractor = EncodecFeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0)
    MusicgenProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(out)


def build_musicgen_melody(out: Path) -> None:
    """transformers MusicGen-Melody: MusicGen plus a chroma of the melody as a conditioning prefix.

    transformers' own MusicgenMelodyFeatureExtractor needs torchaudio, which has no CPU wheel
    here; the preprocessor config is written as the hub ships it, and the engine computes
    the chroma itself from those settings.
    """
    from transformers import (
        MusicgenMelodyConfig,
        MusicgenMelodyDecoderConfig,
        MusicgenMelodyForConditionalGeneration,
    )

    tokenizer = _t5_tokenizer()
    config = MusicgenMelodyConfig(
        text_encoder=_t5_config(len(tokenizer)),
        audio_encoder=_encodec_config(),
        decoder=MusicgenMelodyDecoderConfig(**_decoder_kwargs()),
        num_chroma=12,
        chroma_length=235,
    )
    model = MusicgenMelodyForConditionalGeneration(config)
    # At the default init scale the chroma prefix barely moves the logits (1e-4), so a
    # different melody would give the same tokens; scale its projection up so it matters.
    with torch.no_grad():
        model.audio_enc_to_dec_proj.weight.normal_(0.0, 1.0)
    _save_model(model, out)
    tokenizer.save_pretrained(out)
    preprocessor = {
        "chunk_length": 30,
        "feature_extractor_type": "MusicgenMelodyFeatureExtractor",
        "feature_size": 12,
        "hop_length": 4096,
        "n_fft": 16384,
        "num_chroma": 12,
        "padding_side": "right",
        "padding_value": 0.0,
        "processor_class": "MusicgenMelodyProcessor",
        "return_attention_mask": True,
        "sampling_rate": SAMPLE_RATE,
        "stem_indices": [3, 2],
    }
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2, sort_keys=True) + "\n")


def build_clap(out: Path) -> None:
    """transformers CLAP (text-audio alignment, as laion/clap-htsat-unfused): tiny RoBERTa + tiny HTSAT.

    48 kHz, 2 s clips at hop 480 give 201 mel frames, inside the audio model's 64 x 4 = 256;
    HTSAT's width is patch_embeds_hidden_size x 2^(stages - 1) = 8 x 2 = 16.
    """
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import (
        ClapAudioConfig,
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        ClapProcessor,
        ClapTextConfig,
        RobertaTokenizer,
    )

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(ByteLevel.alphabet()))}
    tokenizer = RobertaTokenizer(vocab=vocab, merges=[], model_max_length=128)
    text = ClapTextConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=32, max_position_embeddings=132, projection_dim=16)  # fmt: skip
    audio = ClapAudioConfig(spec_size=64, num_mel_bins=16, window_size=4, patch_size=4, patch_stride=[4, 4],
                            depths=[1, 1], num_attention_heads=[2, 2], patch_embeds_hidden_size=8, hidden_size=16,
                            projection_dim=16, num_classes=8, enable_fusion=False)  # fmt: skip
    model = ClapModel(ClapConfig(text_config=text, audio_config=audio, projection_dim=16)).eval()
    model.save_pretrained(out)
    features = ClapFeatureExtractor(feature_size=16, sampling_rate=48_000, hop_length=480, max_length_s=2,
                                    fft_window_size=512, truncation="rand_trunc", padding="repeatpad")  # fmt: skip
    ClapProcessor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(out)


def build_musicgen_stereo(out: Path) -> None:
    """transformers MusicGen stereo: 8 codebooks, left and right decoded by the same EnCodec."""
    build_musicgen(out, channels=2)


# A chat template in Qwen2's shape (ChatML), short enough for a byte-level tokenizer's context.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LM_CONTEXT = 2048  # byte-level: one token per byte; room for a template, an idea and an answer
LM_SPEAKS = string.ascii_lowercase + " "  # the tiny LM's answers use these bytes only


def build_lm(out: Path) -> None:
    """transformers Qwen2 causal LM (a small instruct model's architecture) with a byte-level tokenizer.

    The tokenizer has the 256 byte-level symbols and ChatML's special tokens, no merges (one
    token per byte), and a chat template. The output head is zero except for lowercase
    letters, space and ``<|im_end|>``, so the random model's answers are printable words
    (a prompt its task's check can accept) and the code path from snapshot to artifact is
    the real one.
    """
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    symbols = sorted(ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(symbols + specials)}
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=[], eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=LM_CONTEXT
    )
    tokenizer.add_special_tokens({"additional_special_tokens": specials[1:]})
    tokenizer.chat_template = CHAT_TEMPLATE
    config = Qwen2Config(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=LM_CONTEXT,
        tie_word_embeddings=False, bos_token_id=None, eos_token_id=vocab["<|im_end|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )  # fmt: skip
    model = Qwen2ForCausalLM(config).eval()
    speaks = [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(c))[0] for c in LM_SPEAKS]
    with torch.no_grad():
        head = model.lm_head.weight
        keep = torch.zeros(head.shape[0], dtype=torch.bool)
        keep[[*speaks, vocab["<|im_end|>"]]] = True
        head.normal_(0.0, 1.0)
        head[~keep] = 0.0
    model.generation_config = GenerationConfig(
        eos_token_id=vocab["<|im_end|>"], pad_token_id=vocab["<|endoftext|>"], do_sample=False
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


# Stable Audio's audio side at its real rates (44.1 kHz stereo, Oobleck hop 2048) with tiny widths.
SA_SAMPLE_RATE = 44_100
SA_DOWNSAMPLING = [2, 4, 4, 8, 8]  # hop 2048 samples, as Stable Audio Open
SA_LATENT_CHANNELS = 8  # Stable Audio Open: 64
SA_LATENT_FRAMES = 128  # 128 x 2048 / 44100 = 5.94 s at most (Stable Audio Open: 1024, 47.55 s)
SA_CONDITIONING_DIM = 16  # Stable Audio Open: 768
SA_TEXT_TOKENS = 64  # Stable Audio Open: 128 (T5-base)
SA_PROMPT_SCALE = 8.0  # see build_stable_audio
SA_DECODER_GAIN = 4.0  # see build_stable_audio


def _oobleck(cls):
    return cls(
        encoder_hidden_size=2 * SA_LATENT_CHANNELS,  # mean and scale of each latent channel
        downsampling_ratios=SA_DOWNSAMPLING,
        channel_multiples=[1, 2, 2, 4, 4],
        decoder_channels=8,
        decoder_input_channels=SA_LATENT_CHANNELS,
        audio_channels=2,
        sampling_rate=SA_SAMPLE_RATE,
    ).eval()


def build_stable_audio(out: Path) -> None:
    """diffusers StableAudioPipeline: tiny T5 + projection + DiT + Oobleck VAE, Stable Audio Open's scheduler.

    Two changes to the random init (measured by tools/tiny_stable_audio_probe.py):

    - Oobleck's decoder at its init scale ignores its input (its convolution biases, through
      the Snake activations, make 97 % of the output): its biases are zeroed and its first
      convolution's weight-norm gain is scaled by ``SA_DECODER_GAIN``, so the audio follows
      the latents (peak about 0.5).
    - The text path (T5 -> projection -> the DiT's cross-attention) is scaled by
      ``SA_PROMPT_SCALE`` on the projection's text Linear and the cross-attention value
      projections, so a prompt moves the latents as much as a seed does.
    """
    from diffusers import (
        AutoencoderOobleck,
        CosineDPMSolverMultistepScheduler,
        StableAudioDiTModel,
        StableAudioPipeline,
        StableAudioProjectionModel,
    )
    from transformers import T5EncoderModel

    tokenizer = _t5_tokenizer()
    tokenizer.model_max_length = SA_TEXT_TOKENS
    config = _t5_config(len(tokenizer))
    text_encoder = T5EncoderModel(config).eval()
    projection_model = StableAudioProjectionModel(
        text_encoder_dim=config.d_model, conditioning_dim=SA_CONDITIONING_DIM, min_value=0, max_value=512
    ).eval()
    transformer = StableAudioDiTModel(
        sample_size=SA_LATENT_FRAMES,
        in_channels=SA_LATENT_CHANNELS,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=4,
        num_key_value_attention_heads=2,
        out_channels=SA_LATENT_CHANNELS,
        cross_attention_dim=64,
        time_proj_dim=32,
        global_states_input_dim=2 * SA_CONDITIONING_DIM,
        cross_attention_input_dim=SA_CONDITIONING_DIM,
    ).eval()
    with warnings.catch_warnings():  # Oobleck uses torch's deprecated (but working) weight_norm
        warnings.simplefilter("ignore", FutureWarning)
        vae = _oobleck(AutoencoderOobleck)
    with torch.no_grad():
        projection_model.text_projection.weight.mul_(SA_PROMPT_SCALE)
        for block in transformer.transformer_blocks:
            block.attn2.to_v.weight.mul_(SA_PROMPT_SCALE)
        for name, parameter in vae.decoder.named_parameters():
            if name.endswith("bias"):
                parameter.zero_()
        vae.decoder.conv1.weight_g.mul_(SA_DECODER_GAIN)
    scheduler = CosineDPMSolverMultistepScheduler(  # Stable Audio Open's scheduler config
        sigma_min=0.3,
        sigma_max=500,
        sigma_data=1.0,
        sigma_schedule="exponential",
        solver_order=2,
        prediction_type="v_prediction",
        rho=7.0,
        final_sigmas_type="zero",
    )
    pipe = StableAudioPipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        projection_model=projection_model,
    )
    pipe.save_pretrained(out, safe_serialization=True)


def build_audiocraft(out: Path, family: str, text_encoder: Path | None = None) -> None:
    """audiocraft AudioGen or MAGNeT after its debug models, built by the audiocraft worker (see its
    ``tiny_configs``), saved as audiocraft saves checkpoints (``state_dict.bin``,
    ``compression_state_dict.bin``: torch pickles of a state dict and a YAML config).

    The worker seeds itself from the torch seed drawn here, so the same seed gives the same bytes.
    """
    from harmonia.engines.audiocraft import Worker

    seed = int(torch.randint(0, 2**62, (1,)).item())
    te = str(text_encoder) if text_encoder is not None else None
    Worker.shared().call("build", family=family, out=str(out), seed=seed, text_encoder=te)


def build_audiogen(out: Path) -> None:
    """audiocraft AudioGen (text to sound): 16 kHz mono EnCodec with 4 codebooks and a causal LM."""
    build_audiocraft(out, "audiogen")


def build_magnet(out: Path) -> None:
    """audiocraft MAGNeT (masked non-autoregressive music): 32 kHz mono EnCodec and a non-causal LM."""
    build_audiocraft(out, "magnet")


T5_BASE_WIDTH = 768  # audiocraft's T5Conditioner reads "t5-base" as 768 wide: the tiny T5 has that width


def build_t5(out: Path) -> None:
    """A T5 encoder (transformers' T5EncoderModel, safetensors) with the offline character tokenizer:
    t5-base's width (768, what audiocraft's conditioner expects of "t5-base"), one layer, tiny inside.
    What an audiocraft model's ``text_encoder:`` names in tests, in place of t5-base."""
    from transformers import T5Config, T5EncoderModel

    tokenizer = _t5_tokenizer()
    config = T5Config(
        vocab_size=len(tokenizer), d_model=T5_BASE_WIDTH, d_kv=8, d_ff=16, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, relative_attention_max_distance=32, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    )  # fmt: skip
    T5EncoderModel(config).eval().save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def build_audiogen_t5(out: Path) -> None:
    """audiocraft AudioGen whose text conditioner is T5 ("t5-base", as the real checkpoints): the tiny
    AudioGen with a T5 conditioner instead of the lookup table. The T5 is not part of the checkpoint
    (audiocraft saves only its projection); the build reads a tiny T5 made here, and generation reads
    the one its params.yaml entry names with ``text_encoder:`` (a local snapshot, never the hub)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="harmonia-t5-") as tmp:
        build_t5(Path(tmp))
        build_audiocraft(out, "audiogen", text_encoder=Path(tmp))


def build_mbd(out: Path) -> None:
    """audiocraft Multi-Band Diffusion for the tiny MAGNeT's tokens (32 kHz, 32-wide EnCodec latents): two
    bands of a small diffusion U-Net, saved as the hub's ``mbd_musicgen_32khz.th`` (a full torch pickle)."""
    from harmonia.engines.audiocraft import Worker

    seed = int(torch.randint(0, 2**62, (1,)).item())
    Worker.shared().call("build_mbd", out=str(out), seed=seed)


# ACE-Step 1.5's audio side at its real rates (48 kHz stereo, hop 1920: 25 latent frames/s) with tiny widths.
ACE_LATENT_CHANNELS = 8  # ACE-Step 1.5: 64
ACE_DOWNSAMPLING = [2, 4, 4, 6, 10]  # hop 1920 samples, as ACE-Step 1.5's VAE
ACE_TEXT_CONTEXT = 4096  # byte-level: one token per byte; the pipeline reads up to 2048 of lyrics


def build_ace_step(out: Path) -> None:
    """diffusers AceStepPipeline: a byte-level Qwen3 tokenizer, tiny Qwen3 text encoder, condition
    encoder, DiT, audio tokenizer and detokenizer (for covers), and an Oobleck VAE at 48 kHz.

    The tokenizer has the 256 byte-level symbols and ``<|endoftext|>`` (the pipeline's prompt
    template ends with it), no merges. The VAE's decoder gets the fix of build_stable_audio
    (biases zeroed, first gain scaled) so the audio follows the latents.
    """
    from diffusers import (
        AceStepPipeline,
        AceStepTransformer1DModel,
        AutoencoderOobleck,
        FlowMatchEulerDiscreteScheduler,
    )
    from diffusers.pipelines.ace_step.modeling_ace_step import (
        AceStepAudioTokenDetokenizer,
        AceStepAudioTokenizer,
        AceStepConditionEncoder,
    )
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3Model

    specials = ["<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(sorted(ByteLevel.alphabet()) + specials)}
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=[], eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        model_max_length=ACE_TEXT_CONTEXT,
    )  # fmt: skip
    text_encoder = Qwen3Model(
        Qwen3Config(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=ACE_TEXT_CONTEXT,
        )
    ).eval()
    width = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                 sliding_window=16)  # fmt: skip
    latent = ACE_LATENT_CHANNELS
    condition_encoder = AceStepConditionEncoder(
        text_hidden_dim=16, timbre_hidden_dim=latent, num_lyric_encoder_hidden_layers=1,
        num_timbre_encoder_hidden_layers=1, **width,
    ).eval()  # fmt: skip
    transformer = AceStepTransformer1DModel(
        num_hidden_layers=2, in_channels=3 * latent, audio_acoustic_hidden_dim=latent, patch_size=2, **width
    ).eval()
    audio_tokenizer = AceStepAudioTokenizer(
        audio_acoustic_hidden_dim=latent, fsq_dim=32, num_attention_pooler_hidden_layers=1, **width
    ).eval()
    audio_token_detokenizer = AceStepAudioTokenDetokenizer(
        audio_acoustic_hidden_dim=latent, num_attention_pooler_hidden_layers=1, **width
    ).eval()
    with warnings.catch_warnings():  # Oobleck uses torch's deprecated (but working) weight_norm
        warnings.simplefilter("ignore", FutureWarning)
        vae = AutoencoderOobleck(
            encoder_hidden_size=2 * latent, downsampling_ratios=ACE_DOWNSAMPLING, channel_multiples=[1, 2, 2, 4, 4],
            decoder_channels=8, decoder_input_channels=latent, audio_channels=2, sampling_rate=48_000,
        ).eval()  # fmt: skip
    with torch.no_grad():
        for name, parameter in vae.decoder.named_parameters():
            if name.endswith("bias"):
                parameter.zero_()
        vae.decoder.conv1.weight_g.mul_(SA_DECODER_GAIN)
    pipe = AceStepPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        condition_encoder=condition_encoder,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0),
        audio_tokenizer=audio_tokenizer,
        audio_token_detokenizer=audio_token_detokenizer,
    )
    pipe.save_pretrained(out, safe_serialization=True)


DEMUCS_SIG = "0badc0de"  # the tiny bag's one model (htdemucs: 955717e8)


def _stable_safetensors(raw: bytes) -> bytes:
    """A safetensors file with its JSON header's keys sorted: safetensors writes the header from a
    hash map, so the metadata's order (and the file's sha256) would change from run to run."""
    import struct

    size = struct.unpack("<Q", raw[:8])[0]
    header = json.dumps(json.loads(raw[8 : 8 + size]), sort_keys=True, separators=(",", ":")).encode()
    if len(header) > size:
        raise BuilderError("safetensors header grew when sorted; cannot write a stable file.")
    return raw[:8] + header + b" " * (size - len(header)) + raw[8 + size :]


def build_demucs(out: Path) -> None:
    """demucs HTDemucs (htdemucs's architecture: 4 stems, 44.1 kHz stereo, 7.8 s segments, nfft 4096,
    depth 4, a cross-domain transformer) with 4 channels and one transformer layer, saved the
    way the demucs hub repos are: ``htdemucs.yaml`` naming the model, and its safetensors with
    the class and arguments in the metadata (as demucs' tools/export_hf.py writes them)."""
    from fractions import Fraction

    import yaml
    from demucs.htdemucs import HTDemucs
    from safetensors.torch import save

    kwargs = dict(
        sources=["drums", "bass", "other", "vocals"], audio_channels=2, samplerate=44_100, segment=Fraction(39, 5),
        channels=4, depth=4, t_layers=1, t_heads=2, dconv_comp=4, bottom_channels=0,
    )  # fmt: skip
    model = HTDemucs(**kwargs).eval()

    def encode(value):
        if isinstance(value, Fraction):
            return {"_type": "fraction", "numerator": value.numerator, "denominator": value.denominator}
        return value

    metadata = {
        "klass": "demucs.htdemucs.HTDemucs",
        "args": "[]",
        "kwargs": json.dumps({k: encode(v) for k, v in kwargs.items()}, sort_keys=True),
    }
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{DEMUCS_SIG}.safetensors").write_bytes(_stable_safetensors(save(state, metadata=metadata)))
    (out / "htdemucs.yaml").write_text(
        yaml.safe_dump({"models": [DEMUCS_SIG], "segment": None, "weights": None})
    )


WHISPER_LANGUAGES = ("en", "de", "fr", "es", "it", "ja", "zh")  # the tiny model's; Whisper has 99


def build_whisper(out: Path) -> None:
    """transformers Whisper (speech recognition): tiny encoder and decoder over Whisper's real audio
    side (16 kHz, 80 mel bins, 30 s windows: 1500 encoder positions), a byte-level tokenizer
    with Whisper's special tokens (start of transcript, languages, tasks, no timestamps), and a
    generation config naming them as the hub's do. The output head is zero except for
    lowercase letters, space and end of text, so the random model writes words."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizer,
    )

    tasks = ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>"]
    specials = ["<|endoftext|>", "<|startoftranscript|>", *[f"<|{x}|>" for x in WHISPER_LANGUAGES], *tasks,
                "<|notimestamps|>"]  # fmt: skip
    vocab = {tok: i for i, tok in enumerate(sorted(ByteLevel.alphabet()) + specials)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n")
    eot = vocab["<|endoftext|>"]
    tokenizer = WhisperTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), unk_token="<|endoftext|>",
                                 bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                 model_max_length=448)  # fmt: skip
    tokenizer.add_special_tokens({"additional_special_tokens": specials[1:]})
    config = WhisperConfig(
        vocab_size=len(vocab), num_mel_bins=80, d_model=16, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_source_positions=1500, max_target_positions=448, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
        decoder_start_token_id=vocab["<|startoftranscript|>"], tie_word_embeddings=False,
        begin_suppress_tokens=None, suppress_tokens=None,
    )  # fmt: skip
    model = WhisperForConditionalGeneration(config).eval()
    speaks = [vocab[tokenizer.tokenize(c)[0]] for c in LM_SPEAKS]
    with torch.no_grad():
        head = model.proj_out.weight
        keep = torch.zeros(head.shape[0], dtype=torch.bool)
        keep[[*speaks, eot]] = True
        head.normal_(0.0, 1.0)
        head[~keep] = 0.0
    model.generation_config = GenerationConfig(
        decoder_start_token_id=vocab["<|startoftranscript|>"], eos_token_id=eot, pad_token_id=eot,
        no_timestamps_token_id=vocab["<|notimestamps|>"], is_multilingual=True, max_length=448,
        lang_to_id={f"<|{x}|>": vocab[f"<|{x}|>"] for x in WHISPER_LANGUAGES},
        task_to_id={"transcribe": vocab["<|transcribe|>"], "translate": vocab["<|translate|>"]},
        max_initial_timestamp_index=50, begin_suppress_tokens=[eot], suppress_tokens=[],
    )  # fmt: skip
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=80, sampling_rate=16_000).save_pretrained(out)


WAN_TEXT_TOKENS = 64  # the tiny tokenizer's model_max_length (Wan 2.1: 512, UMT5-XXL)
WAN_TEXT_DIM = 32  # Wan 2.1: 4096 (UMT5-XXL)
WAN_FLOW_SHIFT = 3.0  # Wan 2.1 at 480p (5.0 at 720p)


def build_wan(out: Path) -> None:
    """diffusers WanPipeline: tiny UMT5 + Wan transformer + Wan VAE, Wan 2.1's scheduler.

    The shapes follow Wan 2.1 (patch 1x2x2, 16 latent channels, the VAE's 4x temporal and 8x
    spatial compression: widths and heights in multiples of 16, frame counts 4k+1) with tiny
    widths (diffusers' own test sizes); the scheduler is Wan 2.1 T2V's UniPC with flow sigmas.
    """
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = _t5_tokenizer()
    tokenizer.model_max_length = WAN_TEXT_TOKENS
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer), d_model=WAN_TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=32, pad_token_id=0,
            eos_token_id=1, decoder_start_token_id=0,
        )
    ).eval()  # fmt: skip
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=WAN_TEXT_DIM, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    ).eval()  # fmt: skip
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        num_train_timesteps=1000,
        flow_shift=WAN_FLOW_SHIFT,
    )
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    pipe.save_pretrained(out, safe_serialization=True)


BUILDERS: dict[str, Callable[[Path], None]] = {
    "musicgen": build_musicgen,
    "musicgen-stereo": build_musicgen_stereo,
    "musicgen-melody": build_musicgen_melody,
    "clap": build_clap,
    "lm": build_lm,
    "stable-audio": build_stable_audio,
    "audiogen": build_audiogen,
    "magnet": build_magnet,
    "audiogen-t5": build_audiogen_t5,
    "mbd": build_mbd,
    "t5": build_t5,
    "ace-step": build_ace_step,
    "demucs": build_demucs,
    "whisper": build_whisper,
    "wan": build_wan,
}
DEFAULT_NAMES = {name: f"tiny-{name}" for name in BUILDERS}  # "lm" -> tiny-lm
BUILDER_ENGINES = {
    "musicgen": "musicgen",
    "musicgen-stereo": "musicgen",
    "musicgen-melody": "musicgen",
    "clap": "clap",
    "lm": "text",
    "stable-audio": "stable-audio",
    "audiogen": "audiogen",
    "magnet": "magnet",
    "audiogen-t5": "audiogen",
    "mbd": None,  # a decoder other models name (mbd:), run by no engine of its own
    "t5": None,  # a text encoder other models name (text_encoder:)
    "ace-step": "ace-step",
    "demucs": "demucs",
    "whisper": "whisper",
    "wan": "wan",
}
AUDIOCRAFT_BUILDERS = ("audiogen", "magnet", "audiogen-t5", "mbd")  # built in the audiocraft worker


def build_tiny(wb: Workbench, builder: str, name: str | None = None, seed: int = 0) -> TinyBuild:
    """Build a tiny model and install it as ``models/NAME`` with an inventory (source: synthetic).

    Args:
        wb: the workbench.
        builder: one of :data:`BUILDERS` ("musicgen", "musicgen-melody").
        name: the snapshot name (default: "tiny-" + builder).
        seed: the seed of every random weight; the same seed gives the same bytes.

    Example:
        >>> build_tiny(Workbench.open(), "musicgen", seed=0).path  # doctest: +SKIP
        PosixPath('/work/models/tiny-musicgen')
    """
    # 1. Check inputs.
    if builder not in BUILDERS:
        raise BuilderError(f"Unknown tiny builder '{builder}'. Known builders: {', '.join(BUILDERS)}.")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise BuilderError(f"seed must be an integer in [0, 2**63), got {seed!r}.")
    name = check_name("model", name or DEFAULT_NAMES[builder])
    declared = wb.specs("model").get(name)
    pickles = ", allow_pickle: true" if builder in AUDIOCRAFT_BUILDERS else ""
    engine = f", engine: {BUILDER_ENGINES[builder]}" if BUILDER_ENGINES[builder] else ""
    entry = f"{name}: {{builder: {builder}, seed: {seed}{engine}{pickles}}}"
    if declared is None:
        raise BuilderError(
            f"Model '{name}' is not declared in params.yaml, so nothing could use it after the build. "
            f"Add '{entry}' under 'models:' in {wb.root / 'params.yaml'}, then build again."
        )
    if declared.builder != builder:
        raise BuilderError(
            f"params.yaml declares model '{name}' with {f'builder {declared.builder}' if declared.builder else 'a hub repo'}, "
            f"not builder {builder}. Pick another --name, or change its entry to '{entry}'."
        )

    # 2. Build from a private RNG stream (the caller's RNG is untouched), hash, install.
    def build(folder: Path) -> None:
        with torch.random.fork_rng(devices=[]), quiet_transformers():
            torch.manual_seed(seed)
            BUILDERS[builder](folder)

    source = Source(type="synthetic", builder=builder, seed=seed, versions=_versions(builder))
    inventory = install_built(wb, "model", name, build, source, license="mit")
    return TinyBuild(name, wb.snapshot_dir("model", name), inventory)
