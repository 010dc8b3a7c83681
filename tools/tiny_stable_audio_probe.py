"""Probe: a tiny diffusers StableAudioPipeline built in code, saved, reloaded offline, generated from.

A reference for the Stable Audio sample engine (issue #14), not part of the package. It
builds every component of ``StableAudioPipeline`` with tiny widths and the real audio
side (44.1 kHz stereo, Oobleck hop 2048, v-prediction cosine DPM-Solver), from a fixed
seed and with no network: the T5 tokenizer comes from an in-memory vocabulary
(harmonia.tiny's), the T5 encoder from a config. It saves the pipeline with
``save_pretrained`` (safetensors), reloads it with ``from_pretrained(local_files_only=True)``
and answers, with numbers:

  a. the sample rate and the output shape;
  b. same seed -> the same bytes, in two separate processes that each reload the snapshot;
  c. another prompt / another seed -> other audio (at their init scale the decoder ignores
     its latents and the DiT its prompt: see ``components`` for what is changed and why);
  d. how long loading and generating take;
  e. the per-step callback (``callback``/``callback_steps``) and cancelling by raising from it;
  f. the snapshot's files and size, and that every weight is safetensors;
  g. ``initial_audio_waveforms`` (a variation of a given clip), and how much the clip
     weighs against the scheduler's sigma_max.

Usage (from the repository root, with the workbench's virtualenv):

    python tools/tiny_stable_audio_probe.py probe /tmp/tiny-stable-audio     # build + every check
    python tools/tiny_stable_audio_probe.py build /tmp/tiny-stable-audio
    python tools/tiny_stable_audio_probe.py generate /tmp/tiny-stable-audio --prompt "kick" --seed 0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read at import time by huggingface_hub
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import warnings

import numpy as np
import torch

# torchsde's Brownian tree warns when float32 sigmas land a hair outside [sigma_min, sigma_max]
# (e.g. 0.29999998 < 0.3): harmless, and upstream's real pipeline prints the same.
warnings.filterwarnings("ignore", message="Should have t", module="torchsde")
warnings.filterwarnings("ignore", message=".*weight_norm.* is deprecated", category=FutureWarning)

SAMPLE_RATE = 44_100
AUDIO_CHANNELS = 2
DOWNSAMPLING = [2, 4, 4, 8, 8]  # Stable Audio Open's Oobleck: hop 2048 samples
HOP = int(np.prod(DOWNSAMPLING))
LATENT_CHANNELS = 8  # Stable Audio Open: 64
SAMPLE_SIZE = 64  # latent frames the DiT is built for: 64 x 2048 / 44100 = 2.97 s at most
CONDITIONING_DIM = 16  # Stable Audio Open: 768
MAX_TEXT_TOKENS = 64  # Stable Audio Open: 128 (T5-base)
PROMPT_SCALE = 8.0  # see components()
DECODER_GAIN = 4.0  # see components()


def components(seed: int = 0, prompt_scale: float = PROMPT_SCALE, decoder_gain: float = DECODER_GAIN) -> dict:
    """Every component of a tiny StableAudioPipeline, from ``seed``, with no network.

    Two changes to the random init, both measured by ``probe``:

    - The Oobleck decoder at its init scale ignores its input: its convolution biases
      (through the Snake activations) make 97 % of the output, so zero latents decode to
      nearly the same audio as any others (other seed: 4 % RMS difference). Its biases are
      zeroed (zero latents now decode to silence) and its first convolution's weight-norm
      gain is scaled by ``decoder_gain``, so the audio follows the latents (peak ~0.5).
    - The text path (T5 -> projection Linear -> the DiT's cross-attention) is scaled by
      ``prompt_scale`` on the projection's text Linear and the cross-attention value
      projections, so a prompt moves the latents as much as a seed does.
    """
    from diffusers import (
        AutoencoderOobleck,
        CosineDPMSolverMultistepScheduler,
        StableAudioDiTModel,
        StableAudioProjectionModel,
    )
    from transformers import T5Config, T5EncoderModel

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from harmonia.tiny import _t5_tokenizer  # the offline Unigram vocabulary MusicGen's tiny model uses

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = _t5_tokenizer()
        tokenizer.model_max_length = MAX_TEXT_TOKENS
        text_encoder = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer),
                d_model=32,
                d_kv=8,
                d_ff=64,
                num_layers=2,
                num_heads=4,
                relative_attention_num_buckets=8,
                relative_attention_max_distance=32,
                pad_token_id=0,
                eos_token_id=1,
            )
        ).eval()
        projection_model = StableAudioProjectionModel(
            text_encoder_dim=32, conditioning_dim=CONDITIONING_DIM, min_value=0, max_value=512
        ).eval()
        transformer = StableAudioDiTModel(
            sample_size=SAMPLE_SIZE,
            in_channels=LATENT_CHANNELS,
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=4,
            num_key_value_attention_heads=2,
            out_channels=LATENT_CHANNELS,
            cross_attention_dim=64,
            time_proj_dim=32,
            global_states_input_dim=2 * CONDITIONING_DIM,
            cross_attention_input_dim=CONDITIONING_DIM,
        ).eval()
        vae = AutoencoderOobleck(
            encoder_hidden_size=2 * LATENT_CHANNELS,  # mean and scale of each latent channel
            downsampling_ratios=DOWNSAMPLING,
            channel_multiples=[1, 2, 2, 4, 4],
            decoder_channels=8,
            decoder_input_channels=LATENT_CHANNELS,
            audio_channels=AUDIO_CHANNELS,
            sampling_rate=SAMPLE_RATE,
        ).eval()
        with torch.no_grad():
            projection_model.text_projection.weight.mul_(prompt_scale)
            for block in transformer.transformer_blocks:
                block.attn2.to_v.weight.mul_(prompt_scale)
            for name, parameter in vae.decoder.named_parameters():
                if name.endswith("bias"):
                    parameter.zero_()
            vae.decoder.conv1.weight_g.mul_(decoder_gain)
    # Stable Audio Open's scheduler config (sigma 0.3..500, v-prediction, exponential schedule).
    scheduler = CosineDPMSolverMultistepScheduler(
        sigma_min=0.3,
        sigma_max=500,
        sigma_data=1.0,
        sigma_schedule="exponential",
        solver_order=2,
        prediction_type="v_prediction",
        rho=7.0,
        final_sigmas_type="zero",
    )
    return {
        "transformer": transformer,
        "scheduler": scheduler,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "projection_model": projection_model,
    }


def build(folder: Path, seed: int = 0) -> float:
    """Build and save the tiny pipeline; returns seconds taken."""
    from diffusers import StableAudioPipeline

    start = time.perf_counter()
    pipe = StableAudioPipeline(**components(seed))
    pipe.save_pretrained(folder, safe_serialization=True)
    return time.perf_counter() - start


def load(folder: Path):
    """The saved pipeline, offline, in eval mode, without tqdm bars."""
    from diffusers import StableAudioPipeline

    pipe = StableAudioPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompt: str, seed: int, seconds: float, steps: int, **kwargs) -> np.ndarray:
    """``[channels, samples]`` float32 audio from one seeded generator (CPU)."""
    generator = torch.Generator("cpu").manual_seed(seed)
    with torch.inference_mode():
        out = pipe(
            prompt,
            audio_end_in_s=seconds,
            num_inference_steps=steps,
            guidance_scale=7.0,
            generator=generator,
            output_type="np",
            **kwargs,
        )
    return np.ascontiguousarray(out.audios[0], dtype=np.float32)


def digest(audio: np.ndarray) -> str:
    return hashlib.sha256(audio.tobytes()).hexdigest()


def snapshot_listing(folder: Path) -> dict:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    rows = {p.relative_to(folder).as_posix(): p.stat().st_size for p in files}
    weights = [name for name in rows if name.endswith((".safetensors", ".bin", ".pt", ".ckpt", ".pth"))]
    return {
        "files": rows,
        "total_bytes": sum(rows.values()),
        "weights": weights,
        "all_safetensors": all(w.endswith(".safetensors") for w in weights),
    }


def cmd_generate(args) -> None:
    """One process: load, generate, print a JSON line (sha256, shape, timings)."""
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    import diffusers.pipelines.stable_audio  # noqa: F401  (import cost, timed apart from loading)

    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    pipe = load(args.folder)
    t1 = time.perf_counter()
    audio = generate(pipe, args.prompt, args.seed, args.seconds, args.steps)
    t2 = time.perf_counter()
    print(
        json.dumps(
            {
                "sha256": digest(audio),
                "shape": list(audio.shape),
                "sample_rate": pipe.vae.config.sampling_rate,
                "import_s": round(t_import, 3),
                "load_s": round(t1 - t0, 3),
                "generate_s": round(t2 - t1, 3),
                "rms": float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))),
            }
        )
    )


def _in_subprocess(folder: Path, prompt: str, seed: int, seconds: float, steps: int, threads: int) -> dict:
    command = [sys.executable, __file__, "generate", str(folder), "--prompt", prompt, "--seed", str(seed)]
    command += ["--seconds", str(seconds), "--steps", str(steps), "--threads", str(threads)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def cmd_probe(args) -> None:
    folder: Path = args.folder
    torch.set_num_threads(args.threads)
    report: dict = {"versions": _versions(), "threads": args.threads}

    # Build and save; (f) the snapshot, and whether a second build gives the same bytes.
    report["build_s"] = round(build(folder, args.seed), 3)
    report["snapshot"] = snapshot_listing(folder)
    twin = folder.with_name(folder.name + "-twin")
    build(twin, args.seed)
    report["snapshot"]["rebuild_identical"] = all(
        (folder / name).read_bytes() == (twin / name).read_bytes() for name in report["snapshot"]["files"]
    )

    # (a), (d): load and generate here.
    t0 = time.perf_counter()
    pipe = load(folder)
    report["load_s"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    a = generate(pipe, "punchy kick drum", 0, args.seconds, args.steps)
    report["generate_s"] = round(time.perf_counter() - t0, 3)
    report["sample_rate"] = pipe.vae.config.sampling_rate
    report["shape"] = list(a.shape)
    report["expected_samples"] = int(args.seconds * pipe.vae.config.sampling_rate)
    report["rms"] = float(np.sqrt(np.mean(a.astype(np.float64) ** 2)))
    report["peak"] = float(np.max(np.abs(a)))

    # (b) two fresh processes, each reloading the snapshot.
    p1 = _in_subprocess(folder, "punchy kick drum", 0, args.seconds, args.steps, args.threads)
    p2 = _in_subprocess(folder, "punchy kick drum", 0, args.seconds, args.steps, args.threads)
    report["same_seed_two_processes"] = {
        "identical": p1["sha256"] == p2["sha256"],
        "equals_in_process": p1["sha256"] == digest(a),
        "sha256": p1["sha256"],
        "subprocess_load_s": [p1["load_s"], p2["load_s"]],
        "subprocess_generate_s": [p1["generate_s"], p2["generate_s"]],
    }

    # (c) another prompt, another seed: how far apart, relative to the audio's level.
    b = generate(pipe, "glass shattering on tiles", 0, args.seconds, args.steps)
    c = generate(pipe, "punchy kick drum", 1, args.seconds, args.steps)

    def rel(x, y):
        return float(np.sqrt(np.mean((x - y) ** 2)) / np.sqrt(np.mean(x**2)))

    report["differences"] = {
        "other_prompt_rel_rms": rel(a, b),
        "other_seed_rel_rms": rel(a, c),
        "other_prompt_identical": digest(a) == digest(b),
        "other_seed_identical": digest(a) == digest(c),
        "prompt_scale": PROMPT_SCALE,
    }

    # (e) the per-step callback and cancelling from it.
    steps_seen: list[tuple[int, float, list[int]]] = []

    def record(step: int, timestep, latents) -> None:
        steps_seen.append((step, float(timestep), list(latents.shape)))

    generate(pipe, "punchy kick drum", 0, args.seconds, args.steps, callback=record, callback_steps=1)
    every_second: list[int] = []
    generate(
        pipe, "punchy kick drum", 0, args.seconds, args.steps,
        callback=lambda i, t, x: every_second.append(i), callback_steps=2,
    )  # fmt: skip

    class Stop(Exception):
        pass

    def cancel_at_2(step, timestep, latents):
        if step == 1:
            raise Stop(f"cancelled after step {step}")

    t0 = time.perf_counter()
    try:
        generate(pipe, "punchy kick drum", 0, args.seconds, args.steps, callback=cancel_at_2)
        cancelled = "not raised"
    except Stop as exc:
        cancelled = str(exc)
    cancel_s = time.perf_counter() - t0
    after = generate(pipe, "punchy kick drum", 0, args.seconds, args.steps)
    report["callback"] = {
        "calls": steps_seen,
        "callback_steps_2": every_second,
        "cancel": cancelled,
        "cancel_s": round(cancel_s, 3),
        "same_bytes_after_a_cancel": digest(after) == digest(a),
    }

    # (g) a variation of a given clip.
    t = np.arange(int(args.seconds * SAMPLE_RATE)) / SAMPLE_RATE
    clip = (0.5 * np.sin(2 * np.pi * 220 * t) * np.exp(-3 * t)).astype(np.float32)
    initial = torch.from_numpy(np.stack([clip, clip]))[None]  # [batch, channels, samples]
    v1 = generate(
        pipe, "punchy kick drum", 0, args.seconds, args.steps,
        initial_audio_waveforms=initial, initial_audio_sampling_rate=SAMPLE_RATE,
    )  # fmt: skip
    v2 = generate(
        pipe, "punchy kick drum", 0, args.seconds, args.steps,
        initial_audio_waveforms=initial, initial_audio_sampling_rate=SAMPLE_RATE,
    )  # fmt: skip
    try:
        generate(pipe, "punchy kick drum", 0, args.seconds, args.steps, initial_audio_waveforms=initial)
        no_rate = "accepted"
    except ValueError as exc:
        no_rate = f"ValueError: {exc}"
    # The pipeline adds the encoded clip to noise already scaled by init_noise_sigma (~sigma_max):
    # at sigma_max = 500 the clip is 1/500 of the start. A scheduler with a lower sigma_max is
    # the only "strength" this pipeline has. Measured in latent space: how much the clip moves
    # the final latents (relative RMS difference with and without it), and the clip's encoding
    # RMS against the generated latents' RMS (a random encoder makes it small).
    with torch.no_grad():
        padded = torch.zeros(1, AUDIO_CHANNELS, SAMPLE_SIZE * HOP)
        padded[..., : initial.shape[-1]] = initial
        encoded = pipe.vae.encode(padded).latent_dist.mode().numpy()

    def latents(**kwargs) -> np.ndarray:
        generator = torch.Generator("cpu").manual_seed(0)
        with torch.inference_mode():
            out = pipe(
                "punchy kick drum", audio_end_in_s=args.seconds, num_inference_steps=args.steps,
                generator=generator, output_type="latent", **kwargs,
            )  # fmt: skip
        return out.audios.numpy()

    original = pipe.scheduler
    by_sigma_max = {}
    for sigma_max in (500.0, 10.0, 1.0):
        pipe.scheduler = type(original).from_config(original.config, sigma_max=sigma_max)
        with_clip = latents(initial_audio_waveforms=initial, initial_audio_sampling_rate=SAMPLE_RATE)
        without = latents()
        by_sigma_max[str(sigma_max)] = {
            "init_noise_sigma": round(float(pipe.scheduler.init_noise_sigma), 4),
            "clip_moves_latents_rel_rms": rel(without, with_clip),
            "clip_encoding_rms_over_latent_rms": float(
                np.sqrt(np.mean(encoded**2)) / np.sqrt(np.mean(without**2))
            ),
        }
    pipe.scheduler = original
    report["variation"] = {
        "shape": list(v1.shape),
        "deterministic": digest(v1) == digest(v2),
        "differs_from_plain_rel_rms": rel(a, v1),
        "without_sampling_rate": no_rate,
        "by_sigma_max": by_sigma_max,
    }
    print(json.dumps(report, indent=2))


def _versions() -> dict:
    from importlib.metadata import version

    names = ("torch", "diffusers", "transformers", "torchsde", "safetensors", "tokenizers", "numpy")
    return {name: version(name) for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("probe", "build", "generate"):
        p = sub.add_parser(name)
        p.add_argument("folder", type=Path)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--seconds", type=float, default=1.5)
        p.add_argument("--steps", type=int, default=4)
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--prompt", default="punchy kick drum")
    args = parser.parse_args()
    if args.command == "build":
        print(
            json.dumps({"build_s": round(build(args.folder, args.seed), 3), **snapshot_listing(args.folder)})
        )
    elif args.command == "generate":
        cmd_generate(args)
    else:
        cmd_probe(args)


if __name__ == "__main__":
    main()
