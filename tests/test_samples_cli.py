"""`harmonia generate sample` and `harmonia samples slice` on the tiny models: the CLI from the KINDS
table, the same bytes in two processes, packs as artifacts (lineage, zip, reproduce), the samples
stage, and every refusal."""

import hashlib
import json
import shutil
import zipfile

import numpy as np
import pytest
import soundfile as sf
import yaml

from harmonia.artifacts import children, list_artifacts, load_artifact
from harmonia.errors import AudioError
from harmonia.generation import From, derive, generate, reproduce
from harmonia.requests import MusicRequest, SliceRequest
from harmonia.workbench import Workbench
from tests.conftest import run_cli

MODEL = "tiny-stable-audio"


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def drums(path, bpm=120.0, bars=2, rate=44_100):
    """A kick-and-hat pattern: decaying tones on every beat, noise bursts on the off-beats."""
    beat = round(60 * rate / bpm)
    x = np.zeros((2, beat * 4 * bars + rate // 2), np.float32)
    t = np.arange(beat) / rate
    kick = (np.exp(-t * 25) * np.sin(2 * np.pi * 60 * t)).astype(np.float32)
    hat = (np.exp(-t * 80) * np.random.default_rng(0).normal(0, 0.3, beat)).astype(np.float32)
    for i in range(4 * bars):
        x[:, i * beat : (i + 1) * beat] += kick
        x[:, i * beat + beat // 2 : i * beat + beat // 2 + beat // 2] += hat[: beat // 2]
    sf.write(path, x.T, rate, subtype="FLOAT")
    return path


def test_generate_sample_comes_from_the_kinds_table_and_repeats_in_another_process(sample_wb, tmp_path):
    args = ("generate", "sample", "punchy kick", "--model", MODEL, "--type", "one-shot", "--duration", "1.5",
            "--steps", "3", "--takes", "2", "--seed", "4", "--threads", "2", "--negative", "hiss")  # fmt: skip
    other = tmp_path / "other"
    shutil.copytree(sample_wb.root, other)
    first = run_cli(*args, cwd=sample_wb.root)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("generated: artifact ") and f"({MODEL}, seed 4, 2 take(s)" in first.stdout
    second = run_cli(*args, cwd=other)
    assert second.returncode == 0, second.stderr
    (a,) = list_artifacts(sample_wb)
    (b,) = list_artifacts(Workbench.open(other))
    assert a.id == b.id
    for out in a.outputs:
        assert sha(a.file(out)) == sha(b.file(out.path)) == out.sha256
    assert a.manifest.request["negative_prompt"] == "hiss" and a.manifest.request["type"] == "one-shot"
    assert [t["seed"] for t in a.manifest.engine.details["takes"]] == [4, 5]
    again = run_cli(*args, cwd=sample_wb.root)
    assert again.stdout.startswith(f"cached: artifact {a.id} ")
    shown = run_cli("reproduce", a.id, cwd=sample_wb.root)
    assert shown.returncode == 0 and shown.stdout.startswith(f"{a.id}: identical (2 outputs, same sha256)")


def test_generate_sample_flags_and_refusals(sample_wb):
    helped = run_cli("generate", "sample", "--help", cwd=sample_wb.root).stdout
    for flag in ("--type {one-shot,loop,sfx}", "--bpm", "--bars", "--beats-per-bar", "--takes", "--init FILE|ID",
                 "--duration", "--steps", "--guidance", "--negative TEXT"):  # fmt: skip
        assert flag in helped, flag
    bad = run_cli("generate", "sample", "x", "--model", MODEL, "--type", "drone", cwd=sample_wb.root)
    assert bad.returncode == 2 and "argument --type: invalid choice: 'drone'" in bad.stderr
    zero = run_cli(
        "generate", "sample", "x", "--model", MODEL, "--type", "loop", "--bpm", "0", cwd=sample_wb.root
    )
    assert (zero.returncode, zero.stderr) == (2, "error: bpm must be >= 20 and <= 400 bpm, got 0.0.\n")
    assert not list_artifacts(sample_wb)


def test_a_loop_on_the_cli_is_exact(sample_wb):
    proc = run_cli("generate", "sample", "funk drums", "--model", MODEL, "--type", "loop", "--bpm", "150",
                   "--bars", "2", "--steps", "2", "--seed", "1", cwd=sample_wb.root)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (art,) = list_artifacts(sample_wb)
    assert (
        art.outputs[0].frames == 141_120
        and art.outputs[0].channels == 2
        and art.outputs[0].sample_rate == 44_100
    )


def test_slice_a_music_artifact_into_a_pack(sample_wb, tmp_path):
    music = generate(
        sample_wb, "tiny-musicgen", MusicRequest("drums", duration_s=3.0, seed=1), previews=False
    ).artifact
    proc = run_cli("samples", "slice", music.id, "--zip", cwd=sample_wb.root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("sliced: pack ")
    pack = next(a for a in list_artifacts(sample_wb) if a.kind == "pack")
    m = pack.manifest
    (parent,) = m.parents
    assert (parent.id, parent.file, parent.role, parent.kind, parent.sha256) == (
        music.id, "take-0.wav", "source", "music", music.outputs[0].sha256,
    )  # fmt: skip
    assert m.model.name == "slicer" and m.model.source == "none" and m.seed is None
    assert [(x.model, x.via) for x in m.licenses] == [
        ("tiny-musicgen", music.id)
    ]  # the music's licence, inherited
    paths = [o.path for o in m.outputs]
    assert paths[-2:] == ["pack.json", "pack.zip"] and all(
        p.startswith(("one-shots/", "loops/")) for p in paths[:-2]
    )
    catalogue = json.loads(pack.file("pack.json").read_text())
    assert [s["file"] for s in catalogue["slices"]] == paths[:-2]
    assert (
        catalogue["source"]["sample_rate"] == 32_000
        and m.engine.details["one_shots"] == len(pack.manifest.outputs) - 2 - m.engine.details["loops"]
    )
    with zipfile.ZipFile(pack.file("pack.zip")) as z:
        assert z.namelist() == [f"pack/{p}" for p in sorted(paths[:-1])]
    assert all(o.media == "audio" and o.sample_rate == 32_000 for o in m.outputs[:-2])
    assert [c.id for c in children(sample_wb, music.id)] == [pack.id]
    shown = run_cli("artifacts", "show", music.id, cwd=sample_wb.root).stdout
    assert f"  child     {pack.id} (pack, as source)\n" in shown
    shown = run_cli("artifacts", "show", pack.id, cwd=sample_wb.root).stdout
    assert "  model     none (slicer runs no model)\n" in shown
    assert f"  parent    {music.id} (music, source: take-0.wav, sha256 {parent.sha256[:12]})\n" in shown
    again = run_cli("samples", "slice", music.id, "--zip", cwd=sample_wb.root)
    assert again.stdout.startswith(f"cached: pack {pack.id} ")
    verdict = run_cli("reproduce", pack.id, cwd=sample_wb.root)
    assert verdict.returncode == 0 and verdict.stdout.startswith(
        f"{pack.id}: identical ({len(paths)} outputs, same sha256)"
    )
    # a pack without the zip is another artifact; a pack's take can be sliced again (it holds audio)
    plain = derive(sample_wb, "slicer", SliceRequest(source=From(music.id))).artifact
    assert plain.id != pack.id and "pack.zip" not in [o.path for o in plain.outputs]


def test_slice_a_file_at_a_known_tempo(sample_wb, tmp_path):
    source = drums(tmp_path / "drums.wav")
    art = derive(sample_wb, "slicer", SliceRequest(source=str(source), bpm=120, types=("loop",))).artifact
    assert art.manifest.parents == () and art.manifest.inputs["source"].source == str(source)
    loops = [o for o in art.outputs if o.path.startswith("loops/")]
    assert loops and all(o.frames == 88_200 for o in loops)  # 1 bar at 120 bpm, 44.1 kHz
    assert art.manifest.licenses == ()
    assert reproduce(sample_wb, art.id).identical


def test_slice_refusals(sample_wb, tmp_path, monkeypatch):
    # an artifact that holds no audio
    music = generate(
        sample_wb, "tiny-musicgen", MusicRequest("x", duration_s=0.5, seed=1), previews=False
    ).artifact
    path = music.path / "manifest.json"
    data = json.loads(path.read_text())
    data["outputs"][0]["media"] = "text"
    path.write_text(json.dumps(data))
    proc = run_cli("samples", "slice", music.id, cwd=sample_wb.root)
    assert (proc.returncode, proc.stderr) == (
        2, f"error: source: artifact {music.id} is a music artifact with no audio output; give an artifact that holds audio.\n"
    )  # fmt: skip
    # silent audio
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros((44_100, 2), np.float32), 44_100)
    proc = run_cli("samples", "slice", str(silent), cwd=sample_wb.root)
    assert proc.stderr == (
        f"error: source: {silent} is silent (peak -inf dBFS, below -60 dBFS): there is nothing to cut. "
        "Slice audio with sound in it.\n"
    )
    # no onsets found (real audio always has one at its start: librosa's analysis is stubbed out here)
    import harmonia.samples as samples

    source = drums(tmp_path / "d.wav")
    real = samples._onsets
    monkeypatch.setattr(samples, "_onsets", lambda *a: real(*a).__class__(
        np.zeros(1), np.zeros(1), np.zeros(0, np.int64), np.zeros(0)))  # fmt: skip
    with pytest.raises(AudioError) as caught:
        derive(sample_wb, "slicer", SliceRequest(source=str(source)))
    assert str(caught.value) == (
        f"source: {source}: no onsets found in 4.500 s: librosa found no hit or note start to cut at. "
        "Give audio with distinct hits or notes, or cut a loop at a known bpm with loop()."
    )
    proc = run_cli("samples", "slice", "abcd1234", cwd=sample_wb.root)
    assert proc.returncode == 2 and proc.stderr.startswith("error: No artifact 'abcd1234' in ")
    assert [a.kind for a in list_artifacts(sample_wb)] == ["music"]


def test_the_samples_stage_renders_a_pack_from_the_prompt_list(sample_wb):
    from harmonia.pipeline import stage_samples

    params = yaml.safe_load((sample_wb.root / "params.yaml").read_text())
    params["samples"] = {"model": MODEL, "type": "loop", "bpm": 150.0, "bars": 1, "steps": 2,
                         "prompts": ["funk drums", "house bass"]}  # fmt: skip
    params["pipeline"] = {"seeds": [0]}
    (sample_wb.root / "params.yaml").write_text(yaml.safe_dump(params))
    wb = Workbench.open(sample_wb.root)
    out = wb.root / "packs" / MODEL
    index = stage_samples(wb, MODEL, out)
    assert [t["file"] for t in index["takes"]] == ["loops/001-s0-t0.wav", "loops/002-s0-t0.wav"]
    for take in index["takes"]:
        data, rate = sf.read(out / take["file"], always_2d=True)
        assert data.shape == (70_560, 2) and rate == 44_100 and take["loop"]["bpm"] == 150.0
    assert json.loads((out / "pack.json").read_text()) == index
    again = stage_samples(wb, MODEL, out)  # cache hits: the same artifacts
    assert again["artifacts"] == index["artifacts"]
    assert load_artifact(wb, index["artifacts"][0]).manifest.request["bpm"] == 150.0
