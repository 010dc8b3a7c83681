"""The demucs engine on the tiny HTDemucs: four stems at the model's rate, their sum's error in the
manifest, no randomness (the same bytes in a fresh process), refusals before the model loads."""

import threading

import numpy as np
import pytest
import soundfile as sf
from safetensors.torch import save_file

from harmonia.artifacts import list_artifacts
from harmonia.audio import resample
from harmonia.engines.demucs import DemucsEngine
from harmonia.errors import AudioError, Cancelled, RequestError
from harmonia.generation import From, generate, reproduce
from harmonia.requests import StemsRequest
from harmonia.songs import stems
from tests.conftest import make_snapshot, run_cli

MODEL = "tiny-demucs"
RATE = 44_100


def _tone(wb, name="mix.wav", seconds=2.0, rate=48_000):
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sign(np.sin(2 * np.pi * 2 * t))
    path = wb.root / name
    sf.write(path, np.stack([wave, wave * 0.8], axis=1).astype(np.float32), rate, subtype="FLOAT")
    return path


def test_four_stems_at_the_model_rate_with_the_sum_error_recorded(stems_wb):
    source = _tone(stems_wb)
    seen = []
    art = stems(stems_wb, str(source), model=MODEL, progress=lambda d, t: seen.append((d, t))).artifact
    assert art.kind == "stems" and [o.path for o in art.outputs] == [
        "vocals.wav",
        "drums.wav",
        "bass.wav",
        "other.wav",
    ]
    waves = [sf.read(art.path / o.path, dtype="float32", always_2d=True) for o in art.outputs]
    assert all(rate == RATE and wave.shape == (88_200, 2) for wave, rate in waves)
    assert all(o.media == "audio" and o.sample_rate == RATE for o in art.outputs)
    details = art.manifest.engine.details
    mix, _ = sf.read(art.path / art.manifest.inputs["source"].file, dtype="float32", always_2d=True)
    assert details["stems"] == ["vocals", "drums", "bass", "other"] and details["segments"] == 1 == len(seen)
    assert details["sum_max_abs_diff"] > 0 and isinstance(details["sum_snr_db"], float)
    heard = resample(np.ascontiguousarray(mix.T), 48_000, RATE)  # the source as the model heard it
    total = sum(wave.T.astype(np.float64) for wave, _ in waves)
    assert details["sum_max_abs_diff"] == round(float(np.max(np.abs(total - heard))), 6)
    assert art.manifest.request == {"overlap": 0.25, "source": {"sha256": art.manifest.inputs["source"].sha256,
                                                                "file": "inputs/source.wav"}}  # fmt: skip
    assert reproduce(stems_wb, art.id).verified


@pytest.mark.slow
def test_stems_of_an_artifact_name_it_as_parent_and_match_a_fresh_process(stems_wb):
    wb = stems_wb
    source = _tone(wb, seconds=9.0, rate=RATE)  # two overlapping 7.8 s segments
    made = run_cli("stems", str(source), "--model", MODEL, cwd=wb.root)
    assert made.returncode == 0, made.stderr
    assert "separated: stems " in made.stdout and "the stems add up to the source within" in made.stdout
    (art,) = list_artifacts(wb)
    assert art.manifest.engine.details["segments"] == 2
    here = stems(wb, str(source), model=MODEL)
    assert here.cached and here.artifact.id == art.id
    assert reproduce(wb, art.id).verified  # made in another process, the same bytes in this one
    child = generate(wb, MODEL, StemsRequest(source=From(art.id, "vocals.wav"))).artifact
    (parent,) = child.manifest.parents
    assert (parent.id, parent.file, parent.role, parent.kind) == (art.id, "vocals.wav", "source", "stems")


def test_a_silent_source_and_a_foreign_model_class_are_refused_before_loading(stems_wb, monkeypatch):
    wb = stems_wb
    silent = wb.root / "silent.wav"
    sf.write(silent, np.zeros((RATE, 2), dtype=np.float32), RATE, subtype="FLOAT")
    monkeypatch.setattr(
        DemucsEngine, "load", classmethod(lambda *a, **k: pytest.fail("the model was loaded"))
    )
    with pytest.raises(AudioError) as caught:
        stems(wb, str(silent), model=MODEL)
    assert str(caught.value) == (
        f"source: {silent} is silent (peak -inf dBFS, below -60 dBFS): there is nothing to separate. "
        "Give audio with sound in it."
    )
    with pytest.raises(RequestError, match=r"^overlap must be >= 0 and <= 0.9, got 0.95\.$"):
        generate(wb, MODEL, StemsRequest(source=str(_tone(wb)), overlap=0.95))
    with pytest.raises(
        RequestError, match=r"^no stems model given: pass --model NAME or set songs.stems_model"
    ):
        stems(wb, str(_tone(wb)))
    assert not list_artifacts(wb)


def test_a_model_file_naming_other_code_is_refused(stems_wb, tmp_path):
    import torch

    wb = stems_wb
    evil = tmp_path / "x.safetensors"
    save_file({"w": torch.zeros(1)}, str(evil), metadata={"klass": "os.system", "args": "[]", "kwargs": "{}"})
    make_snapshot(wb, "evil-demucs", {"htdemucs.yaml": b"models: [x]\n", "x.safetensors": evil.read_bytes()})
    (wb.root / "params.yaml").write_text(
        (wb.root / "params.yaml").read_text().replace("models:\n", "models:\n  evil-demucs:\n    builder: hand\n"
                                                      "    seed: 0\n    engine: demucs\n", 1)
    )  # fmt: skip
    from harmonia.workbench import Workbench

    wb = Workbench.open(wb.root)
    with pytest.raises(RequestError) as caught:
        stems(wb, str(_tone(wb)), model="evil-demucs")
    assert str(caught.value) == (
        "Model 'evil-demucs': x.safetensors asks to build 'os.system'; Harmonia builds demucs' own separation "
        "models only (demucs.htdemucs.HTDemucs, demucs.hdemucs.HDemucs, demucs.demucs.Demucs)."
    )


def test_cancel_between_segments_writes_nothing(stems_wb):
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled, match=r"^Generation cancelled at step 0 of 1; no artifact was written\.$"):
        stems(stems_wb, str(_tone(stems_wb)), model=MODEL, cancel=stop)
    assert not list_artifacts(stems_wb)
