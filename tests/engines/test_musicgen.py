"""The MusicGen engine on tiny models: shapes, rates, determinism, faithfulness to transformers."""

import itertools
import math

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from harmonia import kernels
from harmonia.audio import from_array
from harmonia.engines.musicgen import MusicGenEngine, MusicRequest, _plan, _set_precision, check_precision
from harmonia.errors import (
    AudioError,
    Cancelled,
    RequestError,
    SnapshotMissingError,
    UnknownSnapshotError,
    VerificationError,
)

RATE = 32_000
AVX512 = all(flag in kernels.cpu_flags() for flag in kernels.NEEDS["decode_attention"])
OWN = kernels.form("decode_attention") is not None  # the attention kernel in either form
VNNI = (
    "avx512_vnni" in kernels.cpu_flags()
)  # the int8 cache's AVX-512 form needs it (else its AVX2 form runs)


@pytest.fixture(scope="module")
def mono(wb):
    return MusicGenEngine.load(wb, "tiny-musicgen", threads=2)


@pytest.fixture(scope="module")
def stereo(wb):
    return MusicGenEngine.load(wb, "tiny-musicgen-stereo", threads=2)


@pytest.fixture(scope="module")
def melody_model(wb):
    return MusicGenEngine.load(wb, "tiny-musicgen-melody", threads=2)


@pytest.fixture(scope="module")
def sharp_wb(tmp_path_factory, tiny_models):
    """The tiny text models with decoders whose every part moves the tokens.

    At the default init the residual stream is dominated by the position embeddings, so
    attention barely changes a sampled token and a wrong attention would go unnoticed:
    here the token embeddings and every decoder Linear are re-drawn at unit gain.
    """
    import shutil

    from transformers import MusicgenForConditionalGeneration

    from harmonia.inventory import Source
    from harmonia.snapshots import install_built
    from harmonia.workbench import Workbench
    from tests.conftest import PARAMS

    root = tmp_path_factory.mktemp("sharp-wb")
    (root / "params.yaml").write_text(PARAMS)
    wb = Workbench.open(root)
    for name in ("tiny-musicgen", "tiny-musicgen-stereo"):

        def build(folder, name=name):
            model = MusicgenForConditionalGeneration.from_pretrained(
                tiny_models / name, local_files_only=True
            )
            generator = torch.Generator().manual_seed(5)
            with torch.no_grad():
                for embedding in model.decoder.model.decoder.embed_tokens:
                    embedding.weight.normal_(0.0, 1.0, generator=generator)
                for layer in model.decoder.model.decoder.layers:
                    for module in layer.modules():
                        if isinstance(module, torch.nn.Linear):
                            module.weight.normal_(0.0, module.in_features**-0.5, generator=generator)
            model.save_pretrained(folder)
            for extra in (tiny_models / name).iterdir():  # tokenizer and processor files
                if extra.is_file() and not (folder / extra.name).exists() and extra.name != "inventory.json":
                    shutil.copy(extra, folder / extra.name)

        install_built(wb, "model", name, build, Source("synthetic", builder="musicgen", seed=0), None)
    return wb


def tone(seconds, freq=440.0):
    t = np.arange(int(seconds * RATE)) / RATE
    return from_array((0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), RATE)


def test_text_to_music_shape_rate_and_progress(mono):
    calls = []
    result = mono.generate(
        MusicRequest("calm piano", duration_s=1.3, seed=1), progress=lambda d, t: calls.append((d, t))
    )
    assert result.audio.shape == (1, 1, round(1.3 * RATE)) and result.audio.dtype == np.float32
    assert result.sample_rate == RATE and np.isfinite(result.audio).all() and np.abs(result.audio).max() > 0
    frames = math.ceil(1.3 * 50)
    assert result.steps == frames + 3 and calls == [(i, frames + 3) for i in range(1, frames + 4)]
    assert (result.windows, result.stride_s, result.request.seed) == (1, None, 1)
    assert result.codes.shape == (1, 4, frames)


def test_batch_gives_one_take_per_prompt(mono):
    result = mono.generate(MusicRequest(["calm piano", "fast drums", "choir"], duration_s=0.5, seed=2))
    assert result.audio.shape == (3, 1, RATE // 2)
    assert not np.array_equal(result.audio[0], result.audio[1])


def test_the_prompt_steers_the_tokens(mono):
    a = mono.generate(MusicRequest("calm piano", duration_s=1.0, seed=4)).codes
    b = mono.generate(MusicRequest("fast drums", duration_s=1.0, seed=4)).codes
    assert (a != b).sum() > 0


def test_same_seed_same_samples_other_seed_other_samples(mono):
    a = mono.generate(MusicRequest("x", duration_s=0.6, seed=5)).audio
    b = mono.generate(MusicRequest("x", duration_s=0.6, seed=5)).audio
    c = mono.generate(MusicRequest("x", duration_s=0.6, seed=6)).audio
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_seed_is_drawn_and_recorded_when_not_given(mono):
    result = mono.generate(MusicRequest("x", duration_s=0.3))
    assert isinstance(result.request.seed, int) and 0 <= result.request.seed < 2**31
    again = mono.generate(MusicRequest("x", duration_s=0.3, seed=result.request.seed))
    assert np.array_equal(result.audio, again.audio)


@pytest.mark.parametrize(
    "model, prompts, sampling, continuation_s",
    [
        ("tiny-musicgen", ["lofi beat", "drone"], dict(top_k=50, temperature=0.9), 0),  # padded batch
        ("tiny-musicgen", ["lofi beat"], dict(top_k=250), 0),  # batch 1: two rows with guidance
        ("tiny-musicgen", ["a", "b c d"], dict(top_k=0, top_p=0.8, guidance_scale=1.0), 0),
        ("tiny-musicgen-stereo", ["strings"], dict(top_k=100, guidance_scale=4.0), 0),
        ("tiny-musicgen", ["lofi beat", "drone"], dict(top_k=250), 0.3),  # continuation: a prefill
    ],
)
def test_identical_to_plain_transformers_generate(sharp_wb, model, prompts, sampling, continuation_s):
    """Harmonia's own decoding loop samples what transformers' generate samples, byte for byte."""
    from transformers import AutoTokenizer, MusicgenForConditionalGeneration

    engine = MusicGenEngine.load(sharp_wb, model, threads=2)
    path = sharp_wb.snapshot_dir("model", model)
    plain_model = MusicgenForConditionalGeneration.from_pretrained(path, local_files_only=True).eval()
    inputs = AutoTokenizer.from_pretrained(path)(prompts, padding=True, return_tensors="pt")
    settings = dict(temperature=1.0, top_k=250, top_p=1.0, guidance_scale=3.0) | sampling
    extra, continuation = {}, None
    if continuation_s:
        continuation = tone(continuation_s)
        with torch.inference_mode():
            codes = engine._encode(continuation.samples).repeat(len(prompts), 1, 1)
        extra["decoder_input_ids"] = codes.reshape(-1, codes.shape[-1])
    frames = 40 - (codes.shape[-1] if continuation_s else 0)

    ours = engine.generate(
        MusicRequest(prompts, duration_s=0.8, seed=11, continuation=continuation, **settings)
    ).audio
    torch.manual_seed(11)
    with torch.inference_mode():
        plain = plain_model.generate(
            **inputs, do_sample=True, max_new_tokens=frames + engine.max_delay, **settings, **extra
        )
    assert ours.shape[-1] == round(0.8 * RATE)
    assert np.array_equal(ours, plain[..., : ours.shape[-1]].numpy())


def test_stereo(stereo):
    result = stereo.generate(MusicRequest(["a", "b"], duration_s=0.7, seed=1))
    assert result.audio.shape == (2, 2, round(0.7 * RATE)) and result.codes.shape[1] == 8
    assert not np.array_equal(result.audio[0, 0], result.audio[0, 1])  # two channels, not one copied


def test_long_form_slides_the_window_and_records_it(mono):
    assert mono.window_s == 5.04
    result = mono.generate(MusicRequest("x", duration_s=9.0, seed=3, extend_stride_s=2.0))
    assert result.audio.shape == (1, 1, 9 * RATE)
    assert (result.windows, result.stride_s, result.window_s) == (3, 2.0, 5.04)
    assert result.codes.shape == (1, 4, 450)
    # the decoded tokens are the audio (decoding happens once, at the end)
    with torch.inference_mode():
        assert np.array_equal(mono._decode(result.codes)[..., : 9 * RATE].numpy(), result.audio)


def test_window_plan():
    assert _plan(total=100, prompt=0, window=252, stride=151) == [(0, 100)]
    assert _plan(total=450, prompt=0, window=252, stride=100) == [(0, 252), (100, 100), (200, 98)]
    assert _plan(total=600, prompt=0, window=252, stride=100) == [
        (0, 252),
        (100, 100),
        (200, 100),
        (300, 100),
        (400, 48),
    ]
    assert _plan(total=300, prompt=50, window=252, stride=151) == [(0, 202), (151, 48)]


def test_long_form_stereo_and_melody(stereo, melody_model):
    assert stereo.generate(MusicRequest("x", duration_s=6.0, seed=1)).audio.shape == (1, 2, 6 * RATE)
    result = melody_model.generate(MusicRequest("x", duration_s=6.0, seed=1, melody=tone(2.0)))
    assert result.audio.shape == (1, 1, 6 * RATE) and result.windows == 2


def test_melody_conditions_the_output(melody_model):
    a = melody_model.generate(MusicRequest(["a", "b"], duration_s=1.0, seed=4, melody=tone(3.0, 220.0)))
    b = melody_model.generate(MusicRequest(["a", "b"], duration_s=1.0, seed=4, melody=tone(3.0, 330.0)))
    assert a.audio.shape == (2, 1, RATE) and (a.codes != b.codes).sum() > 0
    chroma = melody_model._chroma(tone(3.0, 440.0).samples[0], 0.0)
    assert chroma.shape == (1, 1 + 3 * RATE // 4096, 12) and torch.all(chroma.sum(-1) == 1)
    assert int(chroma[0, 5].argmax()) == 9  # A, counting from C


def test_melody_from_a_file(tmp_path, melody_model):
    path = tmp_path / "melody.flac"
    sf.write(path, tone(2.0).samples[0], RATE)
    assert melody_model.generate(MusicRequest("x", duration_s=0.5, seed=1, melody=str(path))).audio.shape == (
        1,
        1,
        RATE // 2,
    )


@pytest.mark.parametrize("engine", ["mono", "melody_model"])
def test_one_window_is_decoded_once_and_its_audio_is_its_codes(request, monkeypatch, engine):
    # transformers' generate() (melody models) always decodes: its audio is kept, not decoded again
    engine = request.getfixturevalue(engine)
    decode, calls = engine.model.audio_encoder.decode, []
    monkeypatch.setattr(
        engine.model.audio_encoder, "decode", lambda *a, **k: calls.append(1) or decode(*a, **k)
    )
    melody = tone(2.0) if engine.takes_melody else None
    result = engine.generate(MusicRequest("x", duration_s=0.5, seed=1, melody=melody))
    assert len(calls) == 1 and result.windows == 1
    with torch.inference_mode():
        again = engine._decode(result.codes)[..., : result.audio.shape[-1]].numpy()
    assert np.array_equal(result.audio, again)


def test_continuation_keeps_the_prompt_tokens(mono):
    prompt = mono.generate(MusicRequest("x", duration_s=1.0, seed=1))
    result = mono.generate(
        MusicRequest("x", duration_s=2.5, seed=2, continuation=from_array(prompt.audio[0], RATE))
    )
    assert result.audio.shape == (1, 1, round(2.5 * RATE))
    with torch.inference_mode():
        encoded = mono._encode(prompt.audio[0])
    assert torch.equal(result.codes[:, :, : encoded.shape[-1]], encoded)


def test_continuation_with_long_form_and_stereo(stereo):
    prompt = stereo.generate(MusicRequest("x", duration_s=1.0, seed=1))
    result = stereo.generate(
        MusicRequest("x", duration_s=7.0, seed=2, continuation=from_array(prompt.audio[0], RATE))
    )
    assert result.audio.shape == (1, 2, 7 * RATE) and result.windows == 2


def test_cancel_from_progress(mono):
    def stop(done, total):
        if done == 10:
            raise Cancelled(f"Generation cancelled at step {done} of {total}; no artifact was written.")

    with pytest.raises(Cancelled, match="cancelled at step 10 of"):
        mono.generate(MusicRequest("x", duration_s=2.0, seed=1), progress=stop)


def test_generate_changes_nothing_outside_the_call(mono):
    config_before = mono.model.generation_config.to_dict()
    torch.set_num_threads(1)
    torch.manual_seed(99)
    expected = torch.rand(2)
    torch.manual_seed(99)
    mono.generate(MusicRequest("x", duration_s=0.3, seed=1, temperature=0.5, top_k=3, guidance_scale=1.0))
    assert torch.equal(torch.rand(2), expected)
    assert torch.get_num_threads() == 1
    assert mono.model.generation_config.to_dict() == config_before
    torch.set_num_threads(2)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(duration_s=0), "duration_s must be > 0 and <= 300 seconds, got 0."),
        (dict(duration_s=-1.5), "duration_s must be > 0 and <= 300 seconds, got -1.5."),
        (dict(duration_s=float("nan")), "duration_s must be > 0 and <= 300 seconds, got nan."),
        (dict(duration_s=301), "duration_s must be > 0 and <= 300 seconds, got 301."),
        (dict(prompts=("",)), "prompts[0] is empty: describe the music in a few words."),
        (dict(prompts=("ok", "  ")), "prompts[1] is empty: describe the music in a few words."),
        (dict(prompts=()), "prompts must be a non-empty list of strings: give at least one prompt."),
        (dict(temperature=0), "temperature must be > 0 and <= 10 (1.0 is neutral), got 0."),
        (dict(top_p=0), "top_p must be > 0 and <= 1 (1.0 turns it off), got 0."),
        (dict(top_p=1.5), "top_p must be > 0 and <= 1 (1.0 turns it off), got 1.5."),
        (dict(top_k=-1), "top_k must be an integer in [0, 65536] (0 turns it off), got -1."),
        (
            dict(guidance_scale=0.5),
            "guidance_scale must be >= 1 and <= 30 (1.0 turns guidance off), got 0.5.",
        ),
        (dict(seed=-3), "seed must be an integer in [0, 2**63), got -3. Leave it unset to draw one."),
        (dict(extend_stride_s=6.0), "extend_stride_s must be > 0 and < 5.04 seconds, got 6.0."),
    ],
)
def test_bad_requests(mono, changes, message):
    request = MusicRequest(**{"prompts": ("x",), "duration_s": 1.0, "seed": 1, **changes})
    with pytest.raises(RequestError) as exc:
        mono.generate(request)
    assert str(exc.value) == message


def test_melody_needs_a_melody_model(mono):
    with pytest.raises(RequestError) as exc:
        mono.generate(MusicRequest("x", duration_s=1, melody=tone(1.0)))
    assert str(exc.value) == (
        "melody needs a MusicGen-Melody model; 'tiny-musicgen' is text-only MusicGen. "
        "Pick a melody model (e.g. musicgen-melody) or leave melody out."
    )


def test_unreadable_and_silent_melody(tmp_path, melody_model):
    (tmp_path / "m.wav").write_bytes(b"RIFF nonsense")
    with pytest.raises(AudioError, match=r"^melody: cannot read .*m.wav as audio"):
        melody_model.generate(MusicRequest("x", duration_s=1, melody=tmp_path / "m.wav"))
    sf.write(tmp_path / "silent.wav", np.zeros(RATE, np.float32), RATE)
    with pytest.raises(AudioError) as exc:
        melody_model.generate(MusicRequest("x", duration_s=1, melody=tmp_path / "silent.wav"))
    assert str(exc.value) == (
        f"melody: {tmp_path / 'silent.wav'} is silent (peak below -60 dBFS); a melody needs audible notes."
    )


def test_continuation_limits(mono):
    with pytest.raises(
        RequestError, match=r"continuation is 2.00 s long but duration_s is 1: duration_s is the length"
    ):
        mono.generate(MusicRequest("x", duration_s=1, continuation=tone(2.0)))
    with pytest.raises(
        RequestError, match=r"continuation must be shorter than the model's 5.04 s window, got 6.00 s"
    ):
        mono.generate(MusicRequest("x", duration_s=10, continuation=tone(6.0)))


def test_loading_refuses_unknown_missing_and_damaged_models(wb):
    with pytest.raises(
        UnknownSnapshotError, match=r"Unknown model 'nope'. Known models: broken, .*tiny-musicgen"
    ):
        MusicGenEngine.load(wb, "nope")
    with pytest.raises(
        SnapshotMissingError, match=r"Model 'toy' has no snapshot in .*Run: harmonia models fetch toy"
    ):
        MusicGenEngine.load(wb, "toy")
    weights = wb.snapshot_dir("model", "tiny-musicgen-melody") / "model.safetensors"
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-10] + bytes(10))
        with pytest.raises(
            VerificationError,
            match=r"Model 'tiny-musicgen-melody' failed verification: 1 modified \(model.safetensors\)",
        ):
            MusicGenEngine.load(wb, "tiny-musicgen-melody")
    finally:
        weights.write_bytes(original)


@pytest.mark.parametrize("precision", ["bf16", "int8", "int4"])
def test_faster_precisions_are_deterministic_and_touch_only_their_engine(wb, mono, precision):
    engine = MusicGenEngine.load(wb, "tiny-musicgen", threads=2, precision=precision)
    assert engine.loaded.precision == precision
    request = MusicRequest(["calm piano", "drums"], duration_s=0.6, seed=3)
    a, b = engine.generate(request).audio, engine.generate(request).audio
    assert a.shape == (2, 1, round(0.6 * RATE)) and a.dtype == np.float32 and np.array_equal(a, b)
    assert not np.array_equal(a, mono.generate(request).audio)  # a different mode, other bytes
    # the exact engine loaded before is untouched, and so is torch
    assert type(mono.model.decoder.lm_heads[0]).__name__ == FEW_ROWS_CLASS[_few_rows(mono)]
    assert torch.nn.Linear.forward is torch.nn.modules.linear.Linear.forward
    assert mono.model.decoder.lm_heads[0].weight.dtype == torch.float32


@pytest.mark.parametrize(
    ("name", "precision"),
    [
        ("tiny-musicgen", "int8 fbgemm"),
        ("tiny-musicgen", "int8 rowwise"),
        ("tiny-musicgen", "int4"),
        ("tiny-musicgen-melody", "int8 fbgemm"),
        ("tiny-musicgen-melody", "int4"),
    ],
)
def test_int8_and_int4_on_a_bfloat16_load_compute_in_float32(wb, monkeypatch, name, precision):
    """A bfloat16 load keeps its text encoder and EnCodec in bfloat16; int8's and int4's
    decoder is quantised and computes in float32 (their kernels take float32 inputs)."""
    precision, _, products = precision.partition(" ")
    if products:
        monkeypatch.setenv("HARMONIA_INT8_PRODUCTS", products)
    engine = MusicGenEngine.load(wb, name, threads=2, precision=precision, dtype="bfloat16")
    assert dict(engine.loaded.paths).get("int8_products") == (products or None)
    assert (engine.loaded.dtype, engine.loaded.precision) == ("bfloat16", precision)
    model = engine.model
    assert model.decoder.model.decoder.layer_norm.weight.dtype == torch.float32
    assert model.text_encoder.dtype == model.audio_encoder.dtype == torch.bfloat16
    assert dict(engine.loaded.paths).get("attention") != "own"  # own-bf16 or sdpa: a float32 decoder
    melody = (
        tone(2.0) if name.endswith("melody") else None
    )  # (a melody's chroma takes the text encoder's dtype)
    request = MusicRequest("calm piano", duration_s=0.5, seed=3, melody=melody)
    a, b = engine.generate(request).audio, engine.generate(request).audio
    assert a.shape == (1, 1, RATE // 2) and a.dtype == np.float32 and np.array_equal(a, b)
    assert np.isfinite(a).all() and np.abs(a).max() > 0


def test_unknown_precision(wb):
    with pytest.raises(RequestError, match=r"precision must be one of exact, bf16, int8, int4, got 'fp8'\."):
        MusicGenEngine.load(wb, "tiny-musicgen", precision="fp8")


def test_exact_rewrites_the_decoders_products_on_cpu_only(mono):
    # W @ x.T is for this torch CPU build's one-thread few-row F.linear; on another device the
    # decoder stays as transformers built it (meta stands in for a GPU here: no GPU in CI)
    from transformers import MusicgenForConditionalGeneration

    with torch.device("meta"):
        elsewhere = _set_precision(MusicgenForConditionalGeneration(mono.model.config), "exact")
    assert type(elsewhere.decoder.lm_heads[0]) is torch.nn.Linear
    assert type(elsewhere.decoder.model.decoder.layers[0].fc1) is torch.nn.Linear
    expected = FEW_ROWS_CLASS[_few_rows(mono)]  # what the calibration chose on this CPU
    assert type(mono.model.decoder.lm_heads[0]).__name__ == expected
    assert type(mono.model.decoder.model.decoder.layers[0].fc1).__name__ == expected


FEW_ROWS_CLASS = {"matmul": "_FewRowsLinear", "linear": "Linear", "rows": "_RowsLinear"}


def _few_rows(engine) -> str:
    return engine.loaded.choices["few_row_products"].split()[0]


def test_the_few_row_path_is_chosen_by_measurement_cached_recorded_and_overridable(wb, monkeypatch):
    """Either path gives the same bytes (a path whose bits differ is never chosen); the choice is
    measured once per CPU, torch version, threads and shape, then read from .harmonia/calibration.json."""
    import json

    from harmonia.calibration import cpu_model

    cache = wb.state_dir / "calibration.json"
    cache.unlink(missing_ok=True)
    measured = MusicGenEngine.load(wb, "tiny-musicgen", threads=2)
    line = measured.loaded.choices["few_row_products"]
    assert (
        line.startswith(tuple(f"{p} (measured: linear " for p in FEW_ROWS_CLASS)) and " ms, matmul " in line
    )
    if kernels.unavailable("rows_linear") is None:  # Harmonia's kernel is measured where it runs
        assert " ms, rows " in line
    (key,) = json.loads(cache.read_text())
    assert key.startswith(f"{cpu_model()} | torch {torch.__version__} | 2 threads | few_row_products ")
    again = MusicGenEngine.load(wb, "tiny-musicgen", threads=2)
    assert again.loaded.choices["few_row_products"].split()[:2] == [line.split()[0], "(cached:"]
    for engine in (measured, again):  # the choice is what runs
        assert type(engine.model.decoder.lm_heads[0]).__name__ == FEW_ROWS_CLASS[line.split()[0]]
    request = MusicRequest(["calm piano", "drums"], duration_s=1.0, seed=5)
    audio = {}
    paths = [p for p in FEW_ROWS_CLASS if p != "rows" or kernels.unavailable("rows_linear") is None]
    for path in paths:
        monkeypatch.setenv("HARMONIA_FEW_ROW_PRODUCTS", path)
        forced = MusicGenEngine.load(wb, "tiny-musicgen", threads=2)
        assert forced.loaded.choices == {"few_row_products": f"{path} (forced)"}
        assert type(forced.model.decoder.lm_heads[0]).__name__ == FEW_ROWS_CLASS[path]
        audio[path] = forced.generate(request).audio
    assert all(np.array_equal(audio["linear"], audio[path]) for path in paths)
    assert np.array_equal(audio["linear"], measured.generate(request).audio)
    monkeypatch.setenv("HARMONIA_FEW_ROW_PRODUCTS", "fast")
    with pytest.raises(
        RequestError,
        match=r"^HARMONIA_FEW_ROW_PRODUCTS must be auto or one of linear, matmul, rows, got 'fast'\.$",
    ):
        MusicGenEngine.load(wb, "tiny-musicgen", threads=2)


INT8_ON_GPU = (
    "precision 'int8' runs on the CPU only (torch's dynamic int8 kernels are CPU kernels), but the "
    "device is 'cuda'. Use device 'cpu' with int8, or precision 'bf16' or 'exact' on this device."
)


def test_int8_or_int4_on_a_gpu_is_refused_before_anything_loads(wb, monkeypatch):
    # no GPU here: the engine is told it got one, as on a CUDA machine
    import harmonia.engines.musicgen as musicgen

    monkeypatch.setattr(musicgen, "pick_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(musicgen, "open_snapshot", lambda *a: pytest.fail("read the snapshot"))
    with pytest.raises(RequestError) as exc:
        MusicGenEngine.load(wb, "tiny-musicgen", device="cuda", precision="int8")
    assert str(exc.value) == INT8_ON_GPU
    check_precision("bf16", torch.device("cuda"))  # the GPU modes pass
    check_precision("exact", torch.device("mps"))
    with pytest.raises(RequestError, match=r"but the device is 'mps'\."):
        check_precision("int8", torch.device("mps"))
    with pytest.raises(RequestError) as exc:
        MusicGenEngine.load(wb, "tiny-musicgen", device="cuda", precision="int4")
    assert str(exc.value) == (
        "precision 'int4' runs on the CPU only (Harmonia's 4-bit products are CPU products), but the "
        "device is 'cuda'. Use device 'cpu' with int4, or precision 'bf16' or 'exact' on this device."
    )


def test_melody_model_runs_on_text_alone(melody_model):
    result = melody_model.generate(MusicRequest("x", duration_s=0.5, seed=1))
    assert result.audio.shape == (1, 1, RATE // 2) and np.abs(result.audio).max() > 0


def _window_logits(engine, step, text, context, steps: int = 12, cache: str | None = None):
    """A decoding window of ``steps`` through ``step`` after ``context``: the tokens, and the
    logits of every step (seed 5). ``cache``: the dtype to keep the window's keys and values in
    (default: the step's)."""
    from harmonia.engines import decoding

    seen = []

    def recording(*args):
        seen.append(step(*args))
        return seen[-1]

    recording.cache = step.cache if cache is None else cache
    torch.manual_seed(5)
    with torch.inference_mode():
        tokens = decoding.sample_window(
            engine.model,
            recording,
            text["input_ids"],
            text["attention_mask"],
            context,
            steps,
            decoding.Sampling(),
        )
    return tokens, seen


@pytest.mark.parametrize(
    ("precision", "attention"),
    [("exact", "sdpa"), ("bf16", "sdpa"), ("int8", "sdpa"), ("int4", "sdpa")]
    + [(p, "own") for p in ("bf16", "int8", "int4") if OWN]
    + [(p, path) for p in ("int8", "int4") for path in ("own-bf16", "own-int8") if OWN],
)
def test_scripted_step_computes_the_eager_steps_logits_to_the_bit(
    sharp_wb, monkeypatch, precision, attention
):
    """The decoding step runs as TorchScript; its logits are the eager module's, layer by layer,
    every step (on either attention path; exact has only SDPA). With Harmonia's attention and
    int8 or int4 kernels a step's layers are one call (harmonia.decode_layers): the same logits
    to the bit, and the same from Python."""
    from harmonia.engines import decoding

    if precision != "exact":
        monkeypatch.setenv("HARMONIA_ATTENTION", attention)
    # Harmonia's int8 kernel, whatever this CPU measures
    monkeypatch.setenv("HARMONIA_INT8_PRODUCTS", "rowwise")
    engine = MusicGenEngine.load(sharp_wb, "tiny-musicgen", threads=2, precision=precision)
    assert isinstance(engine._step, torch.jit.ScriptModule) and engine._step.attention == attention
    # a step's layers as one call (harmonia.decode_layers) where Harmonia runs both attention and products
    assert engine._step.fused == (attention != "sdpa" and precision in ("int8", "int4"))
    dtype = decoding.attend_dtype(engine._step.norm.weight)
    eager = decoding.DecoderStep(engine.model, dtype, attention)  # layer by layer
    assert not isinstance(eager, torch.jit.ScriptModule) and not eager.fused
    text = engine.tokenizer(["lofi beat", "a slow drone"], padding=True, return_tensors="pt")
    vocab = engine.model.config.decoder.vocab_size
    context = torch.randint(0, vocab, (2 * 4, 5))  # a prefill of five frames, then single steps

    scripted_tokens, scripted = _window_logits(engine, engine._step, text, context)
    eager_tokens, eager_logits = _window_logits(engine, eager, text, context)
    assert len(scripted) == len(eager_logits) == 12 and scripted[0].dtype == torch.float32
    assert all(torch.equal(a, b) for a, b in zip(scripted, eager_logits, strict=True))
    assert torch.equal(scripted_tokens, eager_tokens)
    if engine._step.fused:  # the one call from Python too (the form where TorchScript cannot compile)
        fused = decoding.DecoderStep(engine.model, dtype, attention, fused=True)
        assert fused.fused and not isinstance(fused, torch.jit.ScriptModule)
        fused_tokens, fused_logits = _window_logits(engine, fused, text, context)
        assert all(torch.equal(a, b) for a, b in zip(fused_logits, eager_logits, strict=True))
        assert torch.equal(fused_tokens, eager_tokens)


@pytest.mark.skipif(not OWN, reason="this CPU runs neither form of the attention kernel")
@pytest.mark.parametrize(
    ("precision", "attention"),
    [("bf16", "own"), ("int8", "own"), ("int4", "own"), ("int8", "own-bf16"), ("int4", "own-bf16")],
)
def test_the_own_attention_computes_sdpas_logits_to_rounding_every_step(sharp_wb, precision, attention):
    """Harmonia's attention in a whole decoding window (a prefill of five frames, then single
    steps over a growing cache; the prompt's padded tokens masked; guidance's empty prompt fully
    masked) gives the logits of SDPA over the same cache to rounding at every step, so the same
    tokens on these sharp decoders, where a wrong attention changes them. "own-bf16" rounds a
    float32 decoder's cache to bfloat16: its logits are not the float32 cache's, but close."""
    from harmonia.engines import decoding

    engine = MusicGenEngine.load(sharp_wb, "tiny-musicgen", threads=2, precision=precision)
    dtype = decoding.attend_dtype(engine._step.norm.weight)
    text = engine.tokenizer(["lofi beat", "a slow drone with strings"], padding=True, return_tensors="pt")
    assert not text["attention_mask"].all()  # a padded prompt: the mask matters
    context = torch.randint(0, engine.model.config.decoder.vocab_size, (2 * 4, 5))
    rounded = precision == "bf16" or attention == "own-bf16"  # the kernel's cache is bfloat16

    def run(path, cache=None):
        step = decoding.DecoderStep(engine.model, dtype, path)
        assert isinstance(step.layers[0], decoding._OwnAttentionLayer) == (path != "sdpa")
        rounds = path != "sdpa" and (path == "own-bf16" or precision == "bf16")
        assert step.cache == ("bfloat16" if rounds else "float32")
        return _window_logits(engine, step, text, context, cache=cache)

    sdpa_tokens, sdpa = run(
        "sdpa", cache="bfloat16" if rounded else None
    )  # SDPA over the cache the kernel reads
    own_tokens, own = run(attention)
    for a, b in zip(own, sdpa, strict=True):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max()
    if precision != "bf16":  # another order of the sums (bf16's rounding of attention's output hides it)
        assert any(not torch.equal(a, b) for a, b in zip(own, sdpa, strict=True))
    assert torch.equal(own_tokens, sdpa_tokens)
    if attention == "own-bf16":  # the rounding is real, and small against the logits of the same
        _, unrounded = run("own")  # inputs (the prefill's; after it the two windows draw their own tokens)
        gap = float((own[0] - unrounded[0]).abs().max() / unrounded[0].abs().max())
        assert 0 < gap < 0.05


@pytest.mark.skipif(not OWN, reason="this CPU runs neither form of the attention kernel")
@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_own_int8_reads_what_its_cache_means_with_the_query_rounded(sharp_wb, precision):
    """The "own-int8" path keeps the window's keys and values as int8 codes and a scale per position,
    and the prompt's in bfloat16. Against the kernel ("own") over a float32 cache of what the int8
    one means (each position stored by harmonia.store_int8 and read back as code x scale), over the
    prompt rounded to bfloat16, and with a step's query rounded to int8 as the int8 kernel rounds it
    (its scores are integer dot products): the prefill's logits to the bit (SDPA over the same
    values), every step's to rounding, the same tokens on these sharp decoders. The rounding of the
    cache itself is real and small against float32's."""
    from harmonia.engines import decoding

    engine = MusicGenEngine.load(sharp_wb, "tiny-musicgen", threads=2, precision=precision)
    text = engine.tokenizer(["lofi beat", "a slow drone with strings"], padding=True, return_tensors="pt")
    vocab = engine.model.config.decoder.vocab_size
    context = torch.randint(0, vocab, (2 * 4, 5), generator=torch.Generator().manual_seed(3))
    step = decoding.decoder_step(engine.model, "own-int8")
    assert isinstance(step, torch.jit.ScriptModule) and step.cache == "int8"
    assert all(isinstance(layer, decoding._Int8CacheLayer) for layer in step.layers)

    def rounded(x):  # each row as int8 codes x its scale (harmonia.store_int8's rounding)
        scale = x.abs().amax(-1, keepdim=True) / 127
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        return torch.round(x / scale) * scale

    def through_int8(cache, window, start):  # what the int8 cache means, in float32
        cache[:, :, start : start + window.shape[2]] = rounded(window)

    reference = decoding.DecoderStep(engine.model, torch.float32, "own")
    prompt: set[int] = set()
    for layer in reference.layers:
        layer._store = through_int8

        def attend(query, keys, values, end, causal, mask, own=layer._attend):
            if query.shape[2] == 1 and id(keys) not in prompt:  # a step's self-attention
                query = rounded(query)
            return own(query, keys, values, end, causal, mask)

        layer._attend = attend

    def float32_step(hidden, keys, values, start, cross_keys, cross_values, mask):
        cross = [[c.to(torch.bfloat16).float() for c in caches] for caches in (cross_keys, cross_values)]
        prompt.clear()
        prompt.update(id(c) for c in cross[0])
        return reference(hidden, keys, values, start, *cross, mask)

    float32_step.cache = "float32"
    int8_tokens, int8 = _window_logits(engine, step, text, context)
    float_tokens, floats = _window_logits(engine, float32_step, text, context)
    assert len(int8) == 12 and torch.equal(int8[0], floats[0])  # the prefill, to the bit
    for a, b in zip(int8[1:], floats[1:], strict=True):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max()
    assert torch.equal(int8_tokens, float_tokens)
    _, unrounded = _window_logits(
        engine, decoding.DecoderStep(engine.model, torch.float32, "own"), text, context
    )
    gap = float((int8[0] - unrounded[0]).abs().max() / unrounded[0].abs().max())
    assert 0 < gap < 0.05  # the prefill's logits (after it the windows draw their own tokens)


@pytest.mark.skipif(not AVX512, reason="this CPU lacks AVX-512: only the AVX2 form runs here")
@pytest.mark.parametrize(
    ("precision", "paths"),
    [
        ("exact", {"few_row_products": "rows"}),
        ("bf16", {"bf16_products": "rows", "attention": "own"}),
        ("int4", {"attention": "own-bf16"}),
        pytest.param("int4", {"attention": "own-int8"}, marks=pytest.mark.skipif(not VNNI, reason="no VNNI")),
        pytest.param(
            "int8",
            {"int8_products": "rowwise", "attention": "own-bf16"},
            marks=pytest.mark.skipif(not VNNI, reason="no VNNI"),
        ),
    ],
)
def test_a_cpu_without_avx512_computes_the_same_logits_and_audio(sharp_wb, monkeypatch, precision, paths):
    """An artifact made on Harmonia's kernels (rows, own, own-bf16, own-int8, and the integer products
    of int4 and rowwise int8) replays on a CPU with AVX2 but not AVX-512, whose kernels run in their
    AVX2 form: every step's logits the same to the bit, so the same tokens and audio (sharp decoders:
    the kernels move the tokens)."""
    from harmonia import kernels

    for which, path in paths.items():
        monkeypatch.setenv(f"HARMONIA_{which.upper()}", path)
    engine = MusicGenEngine.load(sharp_wb, "tiny-musicgen", threads=2, precision=precision)
    assert dict(engine.loaded.paths).items() >= paths.items()
    text = engine.tokenizer(["lofi beat", "a slow drone with strings"], padding=True, return_tensors="pt")
    context = torch.randint(0, engine.model.config.decoder.vocab_size, (2 * 4, 5))
    request = MusicRequest(["lofi beat"], duration_s=0.4, seed=2)
    wide_tokens, wide = _window_logits(engine, engine._step, text, context)
    wide_audio = engine.generate(request).audio
    with kernels.forced_form("avx2"):
        assert torch.ops.harmonia.use_form("avx2") == "avx2"  # (what runs inside the block)
        narrow_tokens, narrow = _window_logits(engine, engine._step, text, context)
        narrow_audio = engine.generate(request).audio
    assert torch.ops.harmonia.use_form("avx512") == "avx512"  # restored after it
    assert all(torch.equal(a, b) for a, b in zip(wide, narrow, strict=True)) and len(wide) == 12
    assert torch.equal(wide_tokens, narrow_tokens) and np.array_equal(wide_audio, narrow_audio)


def test_a_torch_without_torchscript_decodes_eagerly_to_the_same_audio(sharp_wb, monkeypatch, caplog):
    def no_script(module):
        raise RuntimeError("TorchScript is gone")

    from harmonia.engines import decoding

    request = MusicRequest(["lofi beat"], duration_s=0.4, seed=2, top_p=0.9, temperature=0.8)
    scripted = MusicGenEngine.load(sharp_wb, "tiny-musicgen", threads=2, precision="int8")
    expected = scripted.generate(request).audio
    monkeypatch.setattr(torch.jit, "script", no_script)
    decoding._compiled.cache_clear()  # the loop's functions are compiled once per process
    try:
        with caplog.at_level("WARNING", logger="harmonia.engines.decoding"):
            eager = MusicGenEngine.load(sharp_wb, "tiny-musicgen", threads=2, precision="int8")
            audio = eager.generate(request).audio
        assert decoding._compiled(decoding._probabilities_eager) is decoding._probabilities_eager
    finally:
        decoding._compiled.cache_clear()
    assert not isinstance(eager._step, torch.jit.ScriptModule)
    assert (
        "decoding runs eagerly: the same results, slower (TorchScript failed: TorchScript is gone)"
        in caplog.text
    )
    for part in ("probabilities", "inputs"):
        assert (
            f"the decoding loop's {part} run eagerly: the same results, slower (TorchScript failed: "
            "TorchScript is gone)" in caplog.text
        )
    assert np.array_equal(audio, expected)


def test_the_compiled_sampling_is_transformers_processors_and_softmax_to_the_bit():
    """Sampling.probabilities (TorchScript) against transformers' processors then F.softmax: every
    setting the loop takes (guidance on and off, temperature, top-k off, 1, within and beyond the
    vocabulary, top-p off, 0 and between), on logits with ties at the top-k boundary."""
    from harmonia.engines import decoding

    assert isinstance(decoding._compiled(decoding._probabilities_eager), torch.jit.ScriptFunction)
    generator = torch.Generator().manual_seed(0)
    for guidance, temperature, top_k, top_p in itertools.product(
        (1.0, 3.0, 1.7), (1.0, 0.7, 1.3), (0, 1, 5, 250, 5000), (1.0, 0.9, 0.3, 0.0)
    ):
        sampling = decoding.Sampling(temperature, top_k, top_p, guidance)
        logits = torch.randn(8, 2048, generator=generator) * 3
        logits[0, :10] = 7.0  # ten tied at the top: top-k 5 keeps all ten, as transformers does
        logits[1, 100:400] = 2.5  # ties across the boundary of top-k 250
        sequence = torch.zeros(4 if guidance > 1 else 8, 5, dtype=torch.long)
        expected = F.softmax(sampling.processors()(sequence, logits), dim=-1)
        with torch.jit.optimized_execution(False):  # as sample_window runs it
            got = sampling.probabilities()(logits)
        assert torch.equal(got, expected), (guidance, temperature, top_k, top_p)
    with pytest.raises(ValueError, match="has to be a strictly positive float"):
        decoding.Sampling(temperature=0.0).probabilities()  # transformers' own check and message


def test_a_decoder_with_another_activation_is_refused(wb):
    from harmonia.engines import decoding

    engine = MusicGenEngine.load(wb, "tiny-musicgen", threads=2)  # a fresh model of its own
    engine.model.decoder.model.decoder.config.activation_function = "relu"
    with pytest.raises(
        RequestError,
        match=r"This MusicGen decoder uses the 'relu' activation; Harmonia's decoding step runs "
        r"MusicGen's gelu decoders\. Use a snapshot whose decoder config has activation_function 'gelu' "
        r"\(every released MusicGen checkpoint does\)\.",
    ):
        decoding.decoder_step(engine.model)
    engine.model.decoder.model.decoder.config.activation_function = "gelu"
    engine.model.decoder.model.decoder.embed_tokens[2].max_norm = 1.0
    with pytest.raises(
        RequestError,
        match=r"This MusicGen decoder's token embeddings renormalise their rows \(max_norm\); Harmonia's "
        r"decoding loop looks them up as they are stored, as every released MusicGen checkpoint's are\.",
    ):
        decoding.decoder_step(engine.model)


def test_the_compiled_inputs_are_the_decoders_embeddings_to_the_bit(mono):
    """The loop's inputs (TorchScript, run as the loop runs it) against MusicgenDecoder's own sum of
    nn.Embedding lookups plus its positions: a prefill and a step, with guidance and without, the
    delay pattern's tokens in place."""
    from harmonia.engines import decoding

    decoder = mono.model.decoder.model.decoder
    inputs = decoding._compiled(decoding._inputs_eager)
    assert isinstance(inputs, torch.jit.ScriptFunction)
    tables = [embedding.weight for embedding in decoder.embed_tokens]
    codebooks, vocab = len(tables), tables[0].shape[0]
    sequence = torch.randint(0, vocab, (2 * codebooks, 12), generator=torch.Generator().manual_seed(3))
    pattern = torch.full_like(sequence, -1)
    pattern[:, 0] = vocab - 1
    pattern[1, 6:] = vocab - 1
    for filled, known, start, guided in ((5, 5, 0, True), (9, 1, 8, True), (12, 7, 3, False)):
        window = sequence[:, filled - known : filled]
        window = torch.where(
            pattern[:, filled - known : filled] == -1, window, pattern[:, filled - known : filled]
        )
        window = window.repeat((2, 1)) if guided else window
        tokens = window.reshape(-1, codebooks, window.shape[-1])
        expected = sum(decoder.embed_tokens[k](tokens[:, k]) for k in range(codebooks))
        expected = expected + decoder.embed_positions.weights[start : start + known]
        with torch.jit.optimized_execution(False):  # as sample_window runs it
            got = inputs(
                sequence, pattern, filled, known, guided, tables, decoder.embed_positions.weights, start
            )
        assert got.shape == (len(window) // codebooks, known, tables[0].shape[1])
        assert torch.equal(got, expected)
