"""Generation into the artifact store, cache hits, reproduction, and what must never be written."""

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from harmonia.artifacts import list_artifacts, load_artifact
from harmonia.audio import loudness_lufs
from harmonia.engines.musicgen import MusicRequest
from harmonia.errors import (
    ArtifactError,
    AudioError,
    RequestError,
    SnapshotMissingError,
    UnknownSnapshotError,
    VerificationError,
)
from harmonia.generation import generate, reproduce
from harmonia.manifest import Manifest, OutputSettings
from harmonia.prompts import Idea
from tests.conftest import REPO_ROOT, run_cli

RATE = 32_000
SECRET = "hf_SECRETsecretSECRETsecret123456"


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tone_file(path, seconds=2.0, freq=440.0, amp=0.5):
    t = np.arange(int(seconds * RATE)) / RATE
    sf.write(path, (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32), RATE)
    return path


def test_artifact_is_complete_and_its_manifest_says_everything(music_wb):
    done = generate(music_wb, "tiny-musicgen", MusicRequest(["calm piano", "drums"], duration_s=1.0, seed=7))
    art = done.artifact
    m = json.loads((art.path / "manifest.json").read_text())  # what is on disk
    assert Manifest.from_json(m) == art.manifest  # and the typed form reads it back whole
    assert not done.cached and art.path == music_wb.artifacts_dir / art.id
    names = sorted(p.name for p in art.path.iterdir())
    assert names == ["manifest.json", "take-0.png", "take-0.wav", "take-1.png", "take-1.wav"]
    assert m["schema"] == "harmonia.manifest/2" and m["id"] == art.id and m["kind"] == "music"
    assert m["request"] == {
        "prompts": ["calm piano", "drums"],
        "duration_s": 1.0,
        "seed": 7,
        "temperature": 1.0,
        "top_k": 250,
        "top_p": 1.0,
        "guidance_scale": 3.0,
        "extend_stride_s": None,
        "melody": None,
        "continuation": None,
    }
    assert m["seed"] == 7
    inv = json.loads((music_wb.snapshot_dir("model", "tiny-musicgen") / "inventory.json").read_text())
    assert m["model"]["name"] == "tiny-musicgen" and m["model"]["source"] == "synthetic"
    assert len(m["model"]["inventory_digest"]) == 64
    from harmonia.inventory import parse_inventory

    assert m["model"]["inventory_digest"] == parse_inventory(inv, "x").digest
    assert m["model"]["license"] == "mit" and m["licenses"] == [
        {"model": "tiny-musicgen", "license": "mit", "via": None}
    ]
    assert m["parents"] == [] and m["inputs"] == {}
    assert m["engine"]["name"] == "musicgen" and m["engine"]["code_version"] == 1
    assert m["engine"]["details"]["long_form"] == {
        "windows": 1,
        "window_s": 5.04,
        "stride_s": None,
    }
    assert {"torch", "transformers", "numpy", "soundfile", "python", "harmonia"} <= set(m["packages"])
    assert (m["runtime"]["device"], m["runtime"]["dtype"]) == ("cpu", "float32") and m["runtime"][
        "threads"
    ] >= 1
    t = m["timings"]
    assert (
        t["load_s"] > 0
        and t["generate_s"] > 0
        and t["real_time_factor"] == pytest.approx(1.0 / t["generate_s"], rel=0.01)
    )
    for i, out in enumerate(m["outputs"]):
        assert out["path"] == f"take-{i}.wav" and out["sha256"] == sha(art.path / out["path"])
        assert (out["sample_rate"], out["channels"], out["frames"], out["duration_s"]) == (RATE, 1, RATE, 1.0)
        assert 0 < out["peak"] <= 1 and out["loudness_lufs"] < 0 and out["preview"] == f"take-{i}.png"
        data, rate = sf.read(art.path / out["path"], dtype="float32")
        assert rate == RATE and np.array_equal(data, done.result.audio[i, 0])
    assert m["files"] == {name: sha(art.path / name) for name in names if name != "manifest.json"}
    identity = m["identity"]
    assert identity["schema"] == "harmonia.identity/2"
    assert identity["engine"] == {"name": "musicgen", "code_version": 1, "writer_version": 1}
    assert set(identity["packages"]) == {
        "tokenizers",
        "torch",
        "transformers",
        "numpy",
        "soundfile",
        "libsndfile",
        "soxr",
        "pyloudnorm",
    }
    assert identity["runtime"] == {
        "device": "cpu",
        "dtype": "float32",
        "threads": m["runtime"]["threads"],
        "precision": "exact",
        "paths": m["runtime"]["paths"],  # the product path measured on this CPU (calibration.py)
    }
    assert m["runtime"]["paths"]["few_row_products"] in ("linear", "matmul", "rows")


def test_same_request_is_a_cache_hit_and_force_regenerates_the_same_bytes(music_wb):
    request = MusicRequest("x", duration_s=0.5, seed=3)
    first = generate(music_wb, "tiny-musicgen", request, previews=False)
    wav = first.artifact.path / "take-0.wav"
    stamp = wav.stat().st_mtime_ns
    again = generate(music_wb, "tiny-musicgen", MusicRequest("x", duration_s=0.5, seed=3), previews=False)
    assert again.cached and again.result is None and again.artifact.id == first.artifact.id
    assert wav.stat().st_mtime_ns == stamp
    forced = generate(music_wb, "tiny-musicgen", request, force=True, previews=False)
    assert not forced.cached and forced.artifact.id == first.artifact.id
    assert forced.artifact.outputs[0].sha256 == first.artifact.outputs[0].sha256
    assert len(list_artifacts(music_wb)) == 1


def test_the_id_follows_what_determines_the_output(music_wb):
    def art_id(model="tiny-musicgen", fmt="wav", **changes):
        request = MusicRequest(**{"prompts": "x", "duration_s": 0.3, "seed": 1, **changes})
        return generate(music_wb, model, request, fmt=fmt, previews=False).artifact.id

    base = art_id()
    assert art_id(duration_s=0.3) == base
    assert (
        len(
            {
                base,
                art_id(seed=2),
                art_id(prompts="y"),
                art_id(fmt="flac"),
                art_id(model="tiny-musicgen-stereo"),
            }
        )
        == 5
    )


def test_reproduce_says_identical_then_reports_drift(music_wb):
    done = generate(music_wb, "tiny-musicgen", MusicRequest("x", duration_s=0.8, seed=9), previews=False)
    verdict = reproduce(music_wb, done.artifact.id[:6])
    assert verdict.identical and verdict.summary() == f"{done.artifact.id}: identical (1 output, same sha256)"
    assert verdict.outputs[0].max_abs_diff == 0 and verdict.outputs[0].snr_db == math.inf
    # damage the stored take: reproduce reports how far it is from a fresh generation
    path = done.artifact.path / "take-0.wav"
    data, _ = sf.read(path, dtype="float32")
    sf.write(path, data * 0.9, RATE, subtype="FLOAT")
    drift = reproduce(music_wb, done.artifact.id)
    assert not drift.identical
    assert drift.outputs[0].max_abs_diff == pytest.approx(np.max(np.abs(data)) * 0.1, rel=1e-3)
    assert drift.outputs[0].snr_db == pytest.approx(
        10 * math.log10(0.81 / 0.01), abs=0.01
    )  # 0.9 x signal, 0.1 x error
    assert drift.differences == (
        "stored take-0.wav no longer matches its manifest sha256 (changed after writing)",
    )
    assert drift.summary().startswith(f"{done.artifact.id}: drifted: max abs difference ")


def test_the_manifest_records_torchs_cpu_kernels_and_reproduce_names_a_change(music_wb):
    """Another vector width (AVX2 against AVX-512) rounds some of torch's own arithmetic
    differently, so a take made on one may replay on the other only to rounding: reproduce says
    why (a manifest from before the record, or a GPU's take, says nothing of it)."""
    from harmonia.calibration import cpu_model

    done = generate(music_wb, "tiny-musicgen", MusicRequest("x", duration_s=0.4, seed=4), previews=False)
    here = torch.backends.cpu.get_cpu_capability()
    runtime = done.artifact.manifest.runtime
    assert runtime.torch_cpu == here != ""  # e.g. AVX512, AVX2
    assert runtime.cpu == cpu_model()
    assert reproduce(music_wb, done.artifact.id).differences == ()
    manifest = done.artifact.path / "manifest.json"
    data = json.loads(manifest.read_text())
    data["runtime"]["torch_cpu"], data["runtime"]["cpu"] = "SOMEWHERE", "Another CPU"
    manifest.write_text(json.dumps(data, indent=2))
    verdict = reproduce(music_wb, done.artifact.id)
    assert verdict.identical  # (it ran here: the note is about the record, not the bytes)
    assert verdict.differences == (
        f"torch's CPU kernels SOMEWHERE -> {here} (Another CPU -> {cpu_model()}): torch's own arithmetic "
        "takes other vector paths here, which may round differently",
    )
    data["runtime"]["device"] = "cuda"  # a GPU's take: torch's CPU kernels did not make it
    manifest.write_text(json.dumps(data, indent=2))
    differences = reproduce(music_wb, done.artifact.id).differences
    assert not any(d.startswith("torch's CPU kernels") for d in differences)
    if not torch.cuda.is_available():
        assert differences == ("device cuda -> cpu (no GPU here)",)
    data["runtime"]["device"] = "cpu"
    del data["runtime"]["torch_cpu"]
    manifest.write_text(json.dumps(data, indent=2))
    assert reproduce(music_wb, done.artifact.id).differences == ()


def test_inputs_are_kept_and_reproduce(music_wb, tmp_path):
    melody = tone_file(tmp_path / "melody.wav", 2.0)
    done = generate(
        music_wb,
        "tiny-musicgen-melody",
        MusicRequest("x", duration_s=1.0, seed=2, melody=str(melody)),
        previews=False,
    )
    m = done.artifact.manifest
    assert m.inputs["melody"].sha256 == sha(melody) and m.inputs["melody"].file == "inputs/melody.wav"
    assert m.inputs["melody"].source == str(melody) and m.inputs["melody"].parent is None
    assert sha(done.artifact.path / "inputs/melody.wav") == sha(melody)
    assert m.request["melody"] == {"sha256": sha(melody), "file": "inputs/melody.wav"}
    melody.unlink()  # the artifact reproduces on its own
    assert reproduce(music_wb, done.artifact.id).identical

    prompt_path = done.artifact.path / "take-0.wav"
    cont = generate(
        music_wb,
        "tiny-musicgen-melody",
        MusicRequest("x", duration_s=2.0, seed=2, continuation=str(prompt_path)),
        previews=False,
    )
    assert cont.artifact.manifest.inputs["continuation"].duration_s == 1.0
    assert cont.artifact.outputs[0].duration_s == 2.0
    assert reproduce(music_wb, cont.artifact.id).identical


def test_long_form_stereo_artifact(music_wb):
    done = generate(
        music_wb, "tiny-musicgen-stereo", MusicRequest("x", duration_s=7.0, seed=1), previews=False
    )
    m = done.artifact.manifest
    assert m.engine.details["long_form"] == {"windows": 2, "window_s": 4.96, "stride_s": 2.98}
    assert (m.outputs[0].channels, m.outputs[0].duration_s) == (2, 7.0)
    assert reproduce(music_wb, done.artifact.id).identical


def test_ideas_become_canonical_prompts_and_stay_in_the_manifest(music_wb):
    idea = Idea("rainy night", genre="Lo-Fi", tempo_bpm=80, key="a min")
    done = generate(
        music_wb,
        "tiny-musicgen",
        MusicRequest("ignored", duration_s=0.3, seed=1),
        ideas=[idea],
        previews=False,
    )
    m = done.artifact.manifest
    assert m.request["prompts"] == ["lo-fi, rainy night, 80 bpm, A minor"]
    assert m.ideas == [
        {
            "text": "rainy night",
            "genre": "Lo-Fi",
            "mood": None,
            "tempo_bpm": 80,
            "key": "a min",
            "instruments": [],
        }
    ]


def test_flac_and_loudness_normalisation(music_wb):
    done = generate(
        music_wb,
        "tiny-musicgen",
        MusicRequest("x", duration_s=2.0, seed=1),
        fmt="flac",
        normalize_lufs=-16.0,
        previews=False,
    )
    out = done.artifact.outputs[0]
    assert out.path == "take-0.flac" and sf.info(done.artifact.file(out)).subtype == "PCM_24"
    data, rate = sf.read(done.artifact.file(out), dtype="float32", always_2d=True)
    assert loudness_lufs(data.T, rate) == pytest.approx(-16.0, abs=0.2)
    assert done.artifact.manifest.output == OutputSettings("flac", -16.0)
    assert reproduce(music_wb, done.artifact.id).identical


@pytest.mark.parametrize(
    "model, changes, error, message",
    [
        (
            "tiny-musicgen",
            dict(duration_s=0),
            RequestError,
            "duration_s must be > 0 and <= 300 seconds, got 0.",
        ),
        (
            "tiny-musicgen",
            dict(duration_s=float("nan")),
            RequestError,
            "duration_s must be > 0 and <= 300 seconds, got nan.",
        ),
        (
            "tiny-musicgen",
            dict(duration_s=400),
            RequestError,
            "duration_s must be > 0 and <= 300 seconds, got 400.",
        ),
        (
            "tiny-musicgen",
            dict(prompts=" "),
            RequestError,
            "prompts[0] is empty: describe the music in a few words.",
        ),
        (
            "tiny-musicgen",
            dict(temperature=0),
            RequestError,
            "temperature must be > 0 and <= 10 (1.0 is neutral), got 0.",
        ),
        (
            "tiny-musicgen",
            dict(top_p=1.5),
            RequestError,
            "top_p must be > 0 and <= 1 (1.0 turns it off), got 1.5.",
        ),
        (
            "tiny-musicgen",
            dict(melody="MELODY"),
            RequestError,
            "melody needs a MusicGen-Melody model; 'tiny-musicgen' is text-only",
        ),
        ("tiny-musicgen-melody", dict(melody="UNREADABLE"), AudioError, "melody: cannot read "),
        (
            "tiny-musicgen-melody",
            dict(melody="SILENT"),
            AudioError,
            "is silent (peak below -60 dBFS); a melody needs audible notes.",
        ),
        (
            "nope",
            {},
            UnknownSnapshotError,
            "Unknown model 'nope'. Known models: broken, corrupt, gated, ghost, private, tiny-ace-step, tiny-demucs, tiny-musicgen",
        ),
        ("toy", {}, SnapshotMissingError, "Model 'toy' has no snapshot in "),
    ],
)
def test_bad_input_writes_nothing(music_wb, tmp_path, model, changes, error, message):
    files = {"MELODY": tone_file(tmp_path / "m.wav"), "SILENT": tone_file(tmp_path / "s.wav", amp=0.0)}
    (tmp_path / "u.wav").write_text("not audio")
    files["UNREADABLE"] = tmp_path / "u.wav"
    if "melody" in changes:
        changes = {"melody": str(files[changes["melody"]])}
    request = MusicRequest(**{"prompts": "x", "duration_s": 1.0, "seed": 1, **changes})
    with pytest.raises(error) as exc:
        generate(music_wb, model, request)
    assert message in str(exc.value)
    assert not music_wb.artifacts_dir.exists() or list(music_wb.artifacts_dir.iterdir()) == []


def test_damaged_snapshot_is_refused_and_nothing_written(music_wb):
    (music_wb.snapshot_dir("model", "tiny-musicgen") / "config.json").write_text("{}")
    with pytest.raises(
        VerificationError, match=r"Model 'tiny-musicgen' failed verification: 1 truncated \(config.json\)"
    ):
        generate(music_wb, "tiny-musicgen", MusicRequest("x", duration_s=1.0, seed=1))
    assert not music_wb.artifacts_dir.exists()


def test_int8_on_a_gpu_writes_nothing(music_wb, monkeypatch):
    import harmonia.engines.base as base
    import harmonia.engines.musicgen as musicgen
    import harmonia.generation as generation

    for module in (base, musicgen):
        monkeypatch.setattr(module, "pick_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(generation, "open_snapshot", lambda *a: pytest.fail("verified the snapshot"))
    with pytest.raises(RequestError, match=r"^precision 'int8' runs on the CPU only .* on this device\.$"):
        generate(music_wb, "tiny-musicgen", MusicRequest("x", duration_s=1.0, seed=1), precision="int8")
    assert not music_wb.artifacts_dir.exists()


def test_bad_output_settings(music_wb):
    with pytest.raises(RequestError, match=r"format must be one of wav, flac, got 'mp3'"):
        generate(music_wb, "tiny-musicgen", MusicRequest("x", seed=1), fmt="mp3")
    with pytest.raises(RequestError, match=r"normalize_lufs must be in \[-70, 0\] LUFS \(e.g. -14\), got 5"):
        generate(music_wb, "tiny-musicgen", MusicRequest("x", seed=1), normalize_lufs=5)
    with pytest.raises(
        ArtifactError, match=r"No artifact 'abcdef' in .*Run 'harmonia artifacts list' to see the ids\."
    ):
        load_artifact(music_wb, "abcdef")


@pytest.mark.parametrize("precision", ["exact", "bf16", "int8", "int4"])
def test_same_bytes_in_two_processes(music_wb, tmp_path, precision):
    """Two fresh processes, two workbenches: the same id and the same sha256, in every precision mode."""
    import shutil

    other = tmp_path / "other"
    shutil.copytree(music_wb.root, other)
    args = ("generate", "music", "calm piano", "--model", "tiny-musicgen", "--duration", "1.5", "--seed", "21",
            "--threads", "2", "--precision", precision)  # fmt: skip
    runs = [run_cli(*args, cwd=music_wb.root)]
    # the same machine: the second workbench gets the first's calibration of the fast paths
    if (music_wb.root / ".harmonia" / "calibration.json").exists():  # exact on a CPU measures a path
        (other / ".harmonia").mkdir(exist_ok=True)
        shutil.copy(
            music_wb.root / ".harmonia" / "calibration.json", other / ".harmonia" / "calibration.json"
        )
    runs.append(run_cli(*args, cwd=other))
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    ids = [r.stdout.split()[2] for r in runs]
    assert ids[0] == ids[1]
    assert sha(music_wb.artifacts_dir / ids[0] / "take-0.wav") == sha(
        other / "artifacts" / ids[1] / "take-0.wav"
    )


def test_a_killed_generation_leaves_nothing(music_wb):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harmonia",
            "generate",
            "music",
            "x",
            "--model",
            "tiny-musicgen",
            "--duration",
            "240",
            "--seed",
            "1",
        ],
        cwd=music_wb.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(6)  # imports and loading take about 3 s; 240 s of tiny audio take far longer
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list_artifacts(music_wb) == []
    leftovers = list(music_wb.artifacts_dir.iterdir()) if music_wb.artifacts_dir.exists() else []
    assert [p for p in leftovers if not p.name.startswith(".")] == []
    listed = run_cli("artifacts", "list", cwd=music_wb.root)
    assert listed.stdout == "no artifacts in artifacts/\n"


def test_the_token_is_written_nowhere(music_wb):
    env = {"HF_TOKEN": SECRET}
    gen = run_cli(
        "generate",
        "music",
        "x",
        "--model",
        "tiny-musicgen",
        "--duration",
        "0.5",
        "--seed",
        "1",
        cwd=music_wb.root,
        env=env,
    )
    doctor = run_cli("doctor", cwd=music_wb.root, env=env)
    assert gen.returncode == 0 and doctor.returncode == 0, gen.stderr + doctor.stderr
    assert "hub token   configured (from environment HF_TOKEN)" in doctor.stdout
    for proc in (gen, doctor):
        assert SECRET not in proc.stdout + proc.stderr
    for path in music_wb.root.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_precision_is_in_the_manifest_the_id_and_reproduce(music_wb):
    request = MusicRequest("x", duration_s=0.5, seed=2)
    exact = generate(music_wb, "tiny-musicgen", request, previews=False).artifact
    fast = generate(music_wb, "tiny-musicgen", request, precision="int8", previews=False).artifact
    assert exact.id != fast.id
    assert exact.manifest.runtime.precision == "exact" and fast.manifest.runtime.precision == "int8"
    assert fast.manifest.identity["runtime"]["precision"] == "int8"
    assert reproduce(music_wb, fast.id).identical
    with pytest.raises(RequestError, match=r"precision must be one of exact, bf16, int8, int4, got 'fp4'"):
        generate(music_wb, "tiny-musicgen", request, precision="fp4")
