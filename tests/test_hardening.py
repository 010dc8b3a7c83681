"""What a hostile or unlucky user tries, through the CLI: several processes on one id, one process
with two threads, hostile ids and manifests, control characters in what is printed."""

import hashlib
import json
import os
import subprocess
import sys

from tests.conftest import REPO_ROOT, run_cli


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_several_processes_forcing_one_id_all_succeed_and_leave_one_artifact(music_wb):
    """Before: 4-5 of 6 crashed (a starting process deleted the others' staging folders)."""
    args = ["generate", "music", "x", "--duration", "0.5", "--seed", "7", "--threads", "1", "--force"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-m", "harmonia", *args], cwd=music_wb.root, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err for _, err in outs]
    ids = {out.split()[2] for out, _ in outs}
    assert len(ids) == 1
    (art_id,) = ids
    assert sorted(p.name for p in music_wb.artifacts_dir.iterdir()) == [art_id]  # no .partial or .old left
    rep = run_cli("reproduce", art_id, cwd=music_wb.root)
    assert rep.returncode == 0 and "identical" in rep.stdout


def test_control_characters_in_prompts_are_printed_escaped(music_wb):
    prompt = "calm\x1b[31m red\x1b[0m\nnext line\r"
    gen = run_cli("generate", "music", prompt, "--duration", "0.3", "--seed", "1", cwd=music_wb.root)
    assert gen.returncode == 0, gen.stderr
    assert "\x1b" not in gen.stdout and "\r" not in gen.stdout
    assert '"calm\\x1b[31m red\\x1b[0m\\nnext line\\r"' in gen.stdout
    listed = run_cli("artifacts", "list", cwd=music_wb.root).stdout
    assert "\x1b" not in listed and "calm\\x1b[31m" in listed
    art_id = gen.stdout.split()[2]
    manifest = json.loads((music_wb.artifacts_dir / art_id / "manifest.json").read_text())
    assert manifest["request"]["prompts"] == [prompt]  # the manifest keeps the text as given


def test_hostile_ids_give_one_line_errors(music_wb):
    for bad in ("/tmp/x", "../../x", "[a-f]*", "****", "/etc"):
        for command in (["reproduce", bad], ["artifacts", "show", bad]):
            proc = run_cli(*command, cwd=music_wb.root)
            assert proc.returncode == 2 and proc.stdout == ""
            assert proc.stderr.count("\n") == 1 and "is not an artifact id" in proc.stderr, proc.stderr


def test_a_batch_too_large_for_memory_is_refused_before_the_model_loads(music_wb, monkeypatch):
    """Before: 1,000 prompts x 10 s ran until the kernel killed the process at 23.6 GB."""
    import pytest

    import harmonia.engines.base as base
    from harmonia.engines.musicgen import MusicGenEngine
    from harmonia.errors import RequestError
    from harmonia.generation import generate
    from harmonia.requests import MusicRequest

    monkeypatch.setattr(base, "available_memory_bytes", lambda: 20 * 2**20)  # 20 MiB free
    monkeypatch.setattr("harmonia.engines.musicgen.available_memory_bytes", lambda: 20 * 2**20)
    monkeypatch.setattr(
        MusicGenEngine, "load", classmethod(lambda *a, **k: pytest.fail("the model was loaded"))
    )
    with pytest.raises(RequestError) as caught:
        generate(music_wb, "tiny-musicgen", MusicRequest(["x"] * 40, duration_s=4.0, seed=1))
    message = str(caught.value)
    assert (
        message.startswith("40 prompt(s) of 4 s needs about 0.")
        and "GiB of memory but 0.0 GiB are available" in message
    )
    assert message.endswith("prompts per request (the pipeline's music.batch_size), or shorter clips.")
    fits = int(message.split("give at most ")[1].split()[0])
    assert 1 <= fits < 40
    assert not music_wb.artifacts_dir.exists()


def test_only_the_span_of_a_long_melody_that_is_read_is_kept(music_wb, tmp_path):
    """Before: a 30-minute melody was copied whole (345 MB) into the artifact of a 2 s clip."""
    import numpy as np
    import soundfile as sf

    from harmonia.audio import read_audio
    from harmonia.engines.musicgen import used_span
    from harmonia.generation import generate
    from harmonia.requests import MusicRequest

    rate = 8000
    t = np.arange(rate * 120) / rate  # two minutes of a wandering tone
    sf.write(
        tmp_path / "long.wav",
        (0.5 * np.sin(2 * np.pi * (220 + 50 * np.sin(t / 7)) * t)).astype(np.float32),
        rate,
    )
    whole = read_audio(tmp_path / "long.wav", "melody")
    done = generate(
        music_wb,
        "tiny-musicgen-melody",
        MusicRequest("x", duration_s=2.0, seed=4, melody=whole),
        previews=False,
    )
    kept = done.artifact.manifest.inputs["melody"]
    assert kept.duration_s == 2.0 + 30 + 1.0  # duration + the extractor's 30 s chunk + 1 s margin
    assert sf.info(str(done.artifact.path / kept.file)).frames == 33 * rate  # not the 120 s given
    # the same bytes as with the whole melody: the engine itself, given the whole clip
    from harmonia.generation import load_engine

    engine = load_engine(music_wb, "tiny-musicgen-melody")
    full = engine.generate(MusicRequest("x", duration_s=2.0, seed=4, melody=whole))
    assert np.array_equal(full.audio, done.result.audio)
    assert used_span(whole, 500.0) is whole
