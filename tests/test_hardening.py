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


def _nudge_weights(path, count: int = 8) -> None:
    """Change the last ``count`` float32 weights a little, in place (same size, no NaN), and put
    the mtime back: what a careful tamperer does without root."""
    st = path.stat()
    with open(path, "r+b") as f:
        for i in range(1, count + 1):
            f.seek(st.st_size - 4 * i)
            low = f.read(1)[0]
            f.seek(st.st_size - 4 * i)
            f.write(bytes([low ^ 0x01]))  # the lowest mantissa bit of one float32
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def _forge_verify_state(wb, name: str, rel: str) -> None:
    """Record the tampered file's stat facts as those of its last hash: what a root user who puts
    the clock back (so the ctime matches too) achieves. The fast verify then trusts it."""
    state_path = wb.root / ".harmonia" / "verify" / "models" / f"{name}.json"
    state = json.loads(state_path.read_text())
    st = (wb.snapshot_dir("model", name) / rel).stat()
    state["files"][rel][:5] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]
    state_path.write_text(json.dumps(state))


def test_tampered_weights_that_pass_the_fast_verify_are_refused_at_load(music_wb):
    """Before: a same-size overwrite the fast verify trusted made generate write different bytes
    under the clean snapshot's id, and reproduce said "identical"."""
    from harmonia.generation import generate
    from harmonia.requests import MusicRequest
    from harmonia.snapshots import verify

    art_id = generate(music_wb, "tiny-musicgen", MusicRequest("calm", duration_s=0.3, seed=1)).artifact.id
    before = {p.name: sha(p) for p in (music_wb.artifacts_dir / art_id).iterdir()}

    weights = music_wb.snapshot_dir("model", "tiny-musicgen") / "model.safetensors"
    _nudge_weights(weights)
    _forge_verify_state(music_wb, "tiny-musicgen", "model.safetensors")
    assert verify(music_wb, "model", "tiny-musicgen").ok  # the fast verify is fooled

    refusal = (
        "Model 'tiny-musicgen' failed verification: 1 modified (model.safetensors). Run 'harmonia models "
        "verify --full tiny-musicgen' for details, then 'harmonia models tiny musicgen --name tiny-musicgen "
        "--seed 0' to restore it.\n"
    )
    gen = run_cli(
        "generate", "music", "calm", "--duration", "0.3", "--seed", "1", "--force", cwd=music_wb.root
    )
    assert gen.returncode != 0 and gen.stdout == ""
    assert gen.stderr.endswith(refusal) and gen.stderr.count("\n") == 1, gen.stderr
    rep = run_cli("reproduce", art_id, cwd=music_wb.root)
    assert rep.returncode != 0 and rep.stderr.endswith(refusal) and "identical" not in rep.stdout
    assert [p.name for p in music_wb.artifacts_dir.iterdir()] == [art_id]  # nothing new, nothing removed
    assert {p.name: sha(p) for p in (music_wb.artifacts_dir / art_id).iterdir()} == before
    full = verify(music_wb, "model", "tiny-musicgen", full=True)
    assert [(p.kind, p.path) for p in full.problems] == [("modified", "model.safetensors")]


def test_weights_written_while_the_model_runs_stop_the_artifact(music_wb):
    """transformers maps safetensors files shared: a write during a generation changes the
    weights in memory, so the result is refused and nothing is written."""
    import pytest

    from harmonia.errors import VerificationError
    from harmonia.generation import generate
    from harmonia.requests import MusicRequest

    weights = music_wb.snapshot_dir("model", "tiny-musicgen") / "model.safetensors"
    calls = []

    def tamper(done, total):
        if not calls:
            _nudge_weights(weights)
        calls.append(done)

    with pytest.raises(VerificationError) as caught:
        generate(music_wb, "tiny-musicgen", MusicRequest("x", duration_s=0.3, seed=3), progress=tamper)
    assert str(caught.value) == (
        "Model 'tiny-musicgen' changed on disk while it was in use (model.safetensors); nothing was "
        "written. Run 'harmonia models verify --full tiny-musicgen', then generate again."
    )
    assert len(calls) > 1  # it ran to the end; the check came before the write
    assert not music_wb.artifacts_dir.exists() or not any(music_wb.artifacts_dir.iterdir())


def test_weights_written_and_restored_mid_run_stop_the_artifact_whatever_another_load_saw(music_wb):
    """Before: a write at step 1, undone at step 10, then another thread's load (which hashed the
    restored file and refreshed the process-wide record) let the run write its artifact, made
    partly with the written weights, under the clean id."""
    import threading

    import pytest

    from harmonia.errors import VerificationError
    from harmonia.generation import generate
    from harmonia.requests import MusicRequest
    from harmonia.snapshots import require_loadable

    weights = music_wb.snapshot_dir("model", "tiny-musicgen") / "model.safetensors"
    clean = sha(weights)
    calls = []

    def write_then_restore(done, total):
        calls.append(done)
        if len(calls) in (1, 10):
            _nudge_weights(weights)  # the second nudge puts the bytes back
        if len(calls) == 10:
            assert sha(weights) == clean
            other = threading.Thread(target=require_loadable, args=(music_wb, "model", "tiny-musicgen"))
            other.start()
            other.join()

    with pytest.raises(VerificationError) as caught:
        generate(music_wb, "tiny-musicgen", MusicRequest("x", duration_s=0.5, seed=3), threads=1,
                 progress=write_then_restore)  # fmt: skip
    assert str(caught.value) == (
        "Model 'tiny-musicgen' changed on disk while it was in use (model.safetensors); nothing was "
        "written. Run 'harmonia models verify --full tiny-musicgen', then generate again."
    )
    assert len(calls) > 10
    assert not music_wb.artifacts_dir.exists() or not any(music_wb.artifacts_dir.iterdir())
    again = generate(music_wb, "tiny-musicgen", MusicRequest("x", duration_s=0.5, seed=3), threads=1)
    assert not again.cached  # the intact bytes make it, as any first run
