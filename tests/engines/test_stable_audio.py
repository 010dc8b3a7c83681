"""The stable-audio engine on the tiny model: shapes and rates per type, exact loops, seeds per take,
every refusal before the model loads, cancel, init as a parent, reproduce."""

import json
import threading

import numpy as np
import pytest
import soundfile as sf

from harmonia.artifacts import list_artifacts
from harmonia.engines.stable_audio import StableAudioEngine
from harmonia.errors import AudioError, Cancelled, RequestError
from harmonia.generation import From, generate, load_engine, reproduce
from harmonia.requests import SAMPLE_TYPES, SLICE_TYPES, MusicRequest, SampleRequest
from harmonia.samples import longest_loop_bars, loop_length_samples, peak_dbfs
from harmonia.workbench import Workbench

MODEL = "tiny-stable-audio"
RATE = 44_100


@pytest.fixture
def engine(sample_wb):
    return load_engine(sample_wb, MODEL, threads=2)


def test_the_request_names_the_types_the_dsp_knows():
    from harmonia import samples

    assert SAMPLE_TYPES == samples.SAMPLE_TYPES and SLICE_TYPES == samples.SLICE_TYPES


def test_shapes_and_rates_per_type(engine):
    shot = engine.generate(SampleRequest("punchy kick", type="one-shot", steps=3, seed=0, duration_s=2.0))
    (audio,) = shot.audio
    assert shot.sample_rate == RATE and audio.dtype == np.float32 and audio.shape[0] == 2
    assert 0 < audio.shape[1] <= 2 * RATE and round(peak_dbfs(audio), 3) == -1.0  # peak-normalised
    assert np.all(audio[:, -1] == 0)  # faded to zero
    fx = engine.generate(SampleRequest("glass shatter", type="sfx", steps=3, seed=0, duration_s=1.5))
    assert fx.audio[0].shape[0] == 2 and 0 < fx.audio[0].shape[1] <= round(1.5 * RATE)
    assert fx.request.duration_s == 1.5 and fx.generated_s == 1.5
    default = engine.check(SampleRequest("x", type="sfx", bpm=120, bars=2), engine.loaded.path)
    assert (default.bpm, default.bars, default.beats_per_bar) == (None, None, None)  # loop fields: loops only
    assert default.duration_s == pytest.approx(128 * 2048 / RATE)  # 10 s asked, the tiny model's 5.94 s given
    loop = engine.generate(SampleRequest("funk drums", type="loop", bpm=120, steps=3, seed=0, duration_s=9.0))
    assert loop.request.duration_s is None  # a loop's length is its grid's
    assert loop.request.bars == 1 and loop.request.beats_per_bar == 4
    assert loop.audio[0].shape == (2, 88200)  # 1 bar of 4 at 120 bpm
    facts = loop.take_details[0]["loop"]
    assert facts["length_samples"] == 88200 and facts["bpm"] == 120.0
    assert {"seam_jump_ratio_before", "seam_jump_ratio_after", "measured_bpm", "tempo_error_pct"} <= set(
        facts
    )


@pytest.mark.parametrize(
    ("bpm", "bars", "beats"), [(120, 1, 4), (150, 2, 4), (100, 1, 3), (174, 2, 4), (128, 1, 4)]
)
def test_loop_length_is_exact_to_the_sample(engine, bpm, bars, beats):
    result = engine.generate(
        SampleRequest("loop", type="loop", bpm=bpm, bars=bars, beats_per_bar=beats, steps=2, seed=3)
    )
    expected = loop_length_samples(bpm, bars, beats, RATE)
    assert result.audio[0].shape == (2, expected)
    assert result.take_details[0]["loop"]["length_samples"] == expected


def test_each_take_has_its_own_seed_and_the_same_seed_gives_the_same_bytes(engine):
    two = engine.generate(
        SampleRequest(["kick", "snare"], type="sfx", takes=2, steps=3, seed=5, duration_s=1.0)
    )
    assert [(d["prompt"], d["take"], d["seed"]) for d in two.take_details] == [
        (0, 0, 5), (0, 1, 6), (1, 0, 5), (1, 1, 6),
    ]  # fmt: skip
    assert two.prompts == ("kick", "kick", "snare", "snare") and two.steps == 4 * 3
    alone = engine.generate(SampleRequest("kick", type="sfx", steps=3, seed=6, duration_s=1.0))
    assert alone.audio[0].tobytes() == two.audio[1].tobytes()  # take 1 of seed 5 is seed 6's take 0
    assert two.audio[0].tobytes() != two.audio[1].tobytes()
    assert two.audio[0].tobytes() != two.audio[2].tobytes()  # the prompt matters


def test_progress_counts_every_step_of_every_take(engine):
    seen = []
    engine.generate(
        SampleRequest("x", type="sfx", takes=2, steps=4, seed=1, duration_s=0.5),
        progress=lambda d, t: seen.append((d, t)),
    )
    assert seen == [(i, 8) for i in range(1, 9)]


def _refused(wb, request, message, error=RequestError):
    with pytest.raises(error) as caught:
        generate(wb, MODEL, request)
    assert str(caught.value) == message
    assert not wb.artifacts_dir.exists() or not list_artifacts(wb)


def test_every_bad_request_is_refused_with_one_sentence_before_the_model_loads(
    sample_wb, monkeypatch, tmp_path
):
    monkeypatch.setattr(
        StableAudioEngine, "load", classmethod(lambda *a, **k: pytest.fail("the model was loaded"))
    )
    wb = sample_wb
    loop = dict(type="loop", seed=1)
    _refused(wb, SampleRequest("x", bpm=0, **loop), "bpm must be >= 20 and <= 400 bpm, got 0.")
    _refused(wb, SampleRequest("x", bpm=-120, **loop), "bpm must be >= 20 and <= 400 bpm, got -120.")
    _refused(wb, SampleRequest("x", bpm=12000, **loop), "bpm must be >= 20 and <= 400 bpm, got 12000.")
    _refused(
        wb, SampleRequest("x", bpm=120, bars=0, **loop), "bars must be an integer in [1, 64] bars, got 0."
    )
    _refused(
        wb, SampleRequest("x", bpm=120, bars=4, **loop),
        "a 4-bar loop at 120 bpm is 8.00 s and needs 9.02 s of audio (2 more beats to find the first beat, "
        "and the crossfade), but model 'tiny-stable-audio' generates at most 5.94 s; at 120 bpm the longest "
        "loop is 2 bars of 4 beats (4.00 s). Ask for fewer bars or a faster tempo.",
    )  # fmt: skip
    _refused(
        wb, SampleRequest("x", bpm=40, bars=1, **loop),
        "a 1-bar loop at 40 bpm is 6.00 s and needs 9.02 s of audio (2 more beats to find the first beat, "
        "and the crossfade), but model 'tiny-stable-audio' generates at most 5.94 s; even 1 bar of 4 beats "
        "does not fit: use at least 61 bpm.",
    )  # fmt: skip
    _refused(
        wb, SampleRequest("x", **loop),
        "a loop needs a tempo: give bpm (e.g. --bpm 120) and, if not 1, bars (--bars 2).",
    )  # fmt: skip
    _refused(
        wb, SampleRequest("x", type="one-shot", duration_s=60.0, seed=1),
        "duration_s is 60 s but model 'tiny-stable-audio' generates at most 5.94 s; ask for at most 5.94 s.",
    )  # fmt: skip
    _refused(
        wb, SampleRequest("x", type="drone", seed=1),
        "type must be one of one-shot, loop, sfx, got 'drone'. Pick one of those.",
    )  # fmt: skip
    _refused(wb, SampleRequest("  ", seed=1), "prompts[0] is empty: describe the sound in a few words.")
    _refused(
        wb, SampleRequest("x", negative_prompt="", seed=1),
        "negative_prompt must be text naming what to avoid, got ''. Leave it out or describe it.",
    )  # fmt: skip
    _refused(
        wb, SampleRequest("x", takes=0, seed=1), "takes must be an integer in [1, 16] per prompt, got 0."
    )  # fmt: skip
    _refused(
        wb, SampleRequest(["ok", "a b " * 40], seed=1),
        "prompts[1] is 81 tokens long; the model's text encoder reads at most 64. Shorten it.",
    )  # fmt: skip
    # the init audio: unreadable, empty, silent
    text = tmp_path / "notes.txt"
    text.write_text("not audio")
    with pytest.raises(
        AudioError, match=rf"^init: cannot read {text} as audio \(.*\)\. Give a WAV, FLAC, OGG or MP3 file\.$"
    ):
        generate(wb, MODEL, SampleRequest("x", init=str(text), seed=1))
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 2), np.float32), RATE)
    _refused(
        wb,
        SampleRequest("x", init=str(empty), seed=1),
        f"init: {empty} holds no samples. Give a file with audio in it.",
        AudioError,
    )
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros((RATE, 2), np.float32), RATE)
    _refused(
        wb, SampleRequest("x", init=str(silent), seed=1),
        f"init: {silent} is silent (peak below -60 dBFS); a variation needs audible audio. Give another clip or leave init out.",
        AudioError,
    )  # fmt: skip
    with pytest.raises(RequestError) as caught:
        generate(wb, MODEL, SampleRequest("x", seed=1), precision="int8")
    assert str(caught.value) == (
        "precision must be exact for the stable-audio engine (choose float32 or bfloat16 with dtype), got 'int8'."
    )


def test_longest_loop_bars():
    assert longest_loop_bars(120, 4, 5.944) == 2 and longest_loop_bars(120, 4, 47.55) == 23
    assert longest_loop_bars(40, 4, 5.944) == 0


def test_cancel_stops_between_steps_and_writes_nothing(sample_wb):
    stop, seen = threading.Event(), []

    def progress(done, total):
        seen.append(done)
        if done == 3:
            stop.set()

    with pytest.raises(Cancelled, match=r"^Generation cancelled at step 3 of 10; no artifact was written\.$"):
        generate(sample_wb, MODEL, SampleRequest("x", type="sfx", takes=2, steps=5, seed=1, duration_s=0.5),
                 progress=progress, cancel=stop)  # fmt: skip
    assert seen == [1, 2, 3]
    assert not sample_wb.artifacts_dir.exists() or not any(sample_wb.artifacts_dir.iterdir())


def test_init_from_an_artifact_is_a_parent_and_the_sample_reproduces(sample_wb):
    music = generate(
        sample_wb, "tiny-musicgen", MusicRequest("drums", duration_s=1.0, seed=1), previews=False
    ).artifact
    request = SampleRequest("a variation", type="sfx", steps=3, seed=2, duration_s=1.0, init=From(music.id))
    art = generate(sample_wb, MODEL, request, threads=2, previews=False).artifact
    (parent,) = art.manifest.parents
    assert (parent.id, parent.role, parent.kind, parent.file) == (music.id, "init", "music", "take-0.wav")
    assert art.manifest.inputs["init"].sha256 == music.outputs[0].sha256
    assert art.kind == "sample" and art.manifest.request["init"]["sha256"] == music.outputs[0].sha256
    plain = generate(sample_wb, MODEL, SampleRequest("a variation", type="sfx", steps=3, seed=2, duration_s=1.0), threads=2, previews=False).artifact  # fmt: skip
    assert plain.id != art.id and plain.outputs[0].sha256 != art.outputs[0].sha256  # it changes something
    details = art.manifest.engine.details
    assert (
        details["type"] == "sfx"
        and details["takes"][0]["seed"] == 2
        and details["class"] == "StableAudioPipeline"
    )
    assert art.manifest.model.license == "mit" and art.manifest.timings.steps == 3
    verdict = reproduce(sample_wb, art.id)
    assert verdict.identical, verdict.summary()
    again = generate(sample_wb, MODEL, request, threads=2, previews=False)
    assert again.cached and again.artifact.id == art.id


def test_the_tiny_builder_gives_the_same_bytes(tmp_path, tiny_stable_audio):
    from harmonia.tiny import build_tiny
    from tests.conftest import PARAMS

    (tmp_path / "params.yaml").write_text(PARAMS)
    built = build_tiny(Workbench.open(tmp_path), "stable-audio", name=MODEL, seed=0)
    first = json.loads((tiny_stable_audio / MODEL / "inventory.json").read_text())
    assert {f.path: f.sha256 for f in built.inventory.files} == {
        f["path"]: f["sha256"] for f in first["files"]
    }
    assert {f.path for f in built.inventory.files} >= {
        "model_index.json",
        "transformer/diffusion_pytorch_model.safetensors",
    }
    assert not any(f.path.endswith((".bin", ".pt", ".ckpt")) for f in built.inventory.files)
