"""Batches: every row checked before anything runs (one-line errors naming the row and field), the local
pool and a real Ray head on 127.0.0.1 making the same artifacts, one bad row recorded, a killed actor's
rows run again, nothing half-written, Ray never imported by the plain CLI."""

import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

from harmonia.artifacts import intact, list_artifacts, load_artifact
from harmonia.batch import (
    BatchReport,
    ExecutorConfig,
    RowResult,
    check_cluster,
    executor_config,
    fit_actors,
    install_files,
    load_batch,
    run_batch,
    run_row_returning,
)
from harmonia.errors import ArtifactError, ClusterError, FileFormatError, ParamsError, RequestError
from harmonia.generation import generate
from harmonia.requests import MusicRequest
from harmonia.workbench import Workbench
from tests.conftest import REPO_ROOT

BATCH = """\
defaults: {duration_s: 0.5}
rows:
  - {prompt: calm piano, seed: 1}
  - {prompt: a melody that is not there, seed: 2, melody: nothere.wav}
product:
  prompts: [funk drums, warm bass]
  seeds: [0, 1]
  models: [tiny-musicgen]
"""
BAD_ROW = "rows[1]: melody: cannot read nothere.wav as audio"


def write(wb, text, name="batch.yaml") -> Path:
    path = wb.root / name
    path.write_text(text)
    return path


def outputs(wb) -> dict[str, list[str]]:
    """artifact id -> the sha256 of each output file, read from the files themselves."""
    found = {}
    for art in list_artifacts(wb):
        found[art.id] = [hashlib.sha256(art.file(o).read_bytes()).hexdigest() for o in art.outputs]
    return found


# -- reading and checking ---------------------------------------------------------------------
def measured_once(wb) -> None:
    """Measure exact's product path for the rows' thread count in ``wb`` before it is copied.

    On one machine the choice is measured once. Two workbenches that each measure can pick
    different paths where the paths tie: on an Intel Xeon, linear took 77.8 ms against rows'
    78.9. The id names the path, as it must, since the paths round differently, so the ids
    would then differ for the same request.
    """
    from harmonia.engines.musicgen import MusicGenEngine

    MusicGenEngine.load(wb, "tiny-musicgen", threads=1)


def test_rows_and_a_product_become_checked_rows_seeded_per_row(workbench):
    rows = load_batch(workbench, write(workbench, BATCH))
    assert [r.where for r in rows] == [
        "rows[0]", "rows[1]",
        "product[prompt 0, seed 0, model tiny-musicgen]", "product[prompt 0, seed 1, model tiny-musicgen]",
        "product[prompt 1, seed 0, model tiny-musicgen]", "product[prompt 1, seed 1, model tiny-musicgen]",
    ]  # fmt: skip
    assert [r.request["seed"] for r in rows] == [1, 2, 0, 1, 0, 1]
    assert rows[2].request["prompts"] == ["funk drums"] and rows[2].request["duration_s"] == 0.5
    assert rows[0].request["guidance_scale"] == 3.0  # params.yaml's music defaults fill the rest
    assert {r.settings["threads"] for r in rows} == {1}  # fixed: the id is the same on every executor
    assert all(r.model == "tiny-musicgen" for r in rows)
    assert not (workbench.root / "artifacts").exists()  # checking writes nothing


def test_rows_of_any_kind_take_their_kinds_defaults(workbench):
    text = (
        "- {kind: sample, model: tiny-stable-audio, prompt: funk drums, type: loop, bpm: 100, steps: 3, seed: 4}\n"
        "- {kind: pack, source: 5f0c8a4b2d1e9f37, types: [one-shot]}\n"
    )
    sample, pack = load_batch(workbench, write(workbench, text))
    assert (sample.kind, sample.model, sample.request["prompts"], sample.request["bpm"]) == (
        "sample", "tiny-stable-audio", ["funk drums"], 100,
    )  # fmt: skip
    assert sample.request["guidance_scale"] == 7.0 and sample.settings["threads"] == 1
    assert (pack.kind, pack.model, pack.engine, pack.request["types"]) == (
        "pack",
        None,
        "slicer",
        ["one-shot"],
    )
    with pytest.raises(
        RequestError, match=r"rows\[0\]: a pack row is made from an artifact, not from prompts"
    ):
        load_batch(workbench, write(workbench, "- {kind: pack, source: 5f0c8a4b, prompt: x}\n"))


def test_a_row_without_a_seed_gets_one_from_its_content(workbench):
    text = "- {prompt: calm piano}\n- {prompt: calm piano}\n- {prompt: calm piano, duration_s: 2}\n"
    a = load_batch(workbench, write(workbench, text))
    b = load_batch(workbench, write(workbench, text))
    assert (
        a[0].request["seed"] == a[1].request["seed"] == b[0].request["seed"]
    )  # stable: re-runs hit the cache
    assert a[2].request["seed"] != a[0].request["seed"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("- {prompt: x, temprature: 1}\n", "batch.yaml rows[0].temprature is not a field of a music row; allowed: "),
        ("- {prompt: x, duration_s: 999}\n", "batch.yaml rows[0]: duration_s must be > 0 and <= "),
        ("- {prompt: x, top_k: 2.5}\n", "batch.yaml rows[0]: top_k must be an integer in [0, "),
        ("- {prompt: x, seed: -1}\n", "batch.yaml rows[0].seed must be an integer in [0, 2**63), got -1."),
        ("- {prompt: x, kind: poem}\n", "batch.yaml rows[0].kind: 'poem' is not a kind Harmonia makes; known kinds: "),
        ("- {prompt: x, model: nope}\n", "batch.yaml rows[0].model: Unknown model 'nope'."),
        ("- {prompt: x, model: tiny-stable-audio}\n", "batch.yaml rows[0].model: 'tiny-stable-audio' makes sample, not music"),
        ("- {seed: 1}\n", "batch.yaml rows[0]: give 'prompt' (one) or 'prompts' (a list), exactly one of them."),
        ("- {prompt: '  '}\n", "batch.yaml rows[0].prompt must be non-empty text"),
        ("- calm piano\n", "batch.yaml rows[0]: must be a mapping (kind, model, prompt, seed, ...), got str 'calm piano'."),
        ("product: {prompts: [a]}\n", "batch.yaml product.seeds: must be a non-empty list, got NoneType None."),
        ("rowz: []\n", "batch.yaml: 'rowz' is not a batch key; allowed: defaults, rows, product."),
        ("rows: []\n", "batch.yaml: no rows; give 'rows' (a list) or a 'product' of prompts x seeds x models."),
        ("- {prompt: x, format: mp4}\n", "batch.yaml rows[0]: format must be one of wav, flac, got 'mp4'."),
        ("- {prompt: x, threads: 0}\n", "batch.yaml rows[0]: threads must be an integer in [1, "),
        ("- {kind: song, model: tiny-ace-step, prompt: x, lyrics: lyrics.txt}\n", "batch.yaml rows[0].lyrics: 'lyrics.txt' looks like a file name; a batch row takes the lyrics text itself (a YAML block: |)."),
    ],
)  # fmt: skip
def test_a_bad_row_is_one_line_naming_the_row_and_the_field_and_nothing_runs(workbench, text, message):
    with pytest.raises((RequestError, ParamsError)) as exc:
        rows = load_batch(workbench, write(workbench, text))
        run_batch(workbench, rows, ExecutorConfig(workers=1))  # only reached if the check let it through
    assert str(exc.value).startswith(message), str(exc.value)
    assert "\n" not in str(exc.value)
    assert not (workbench.root / "artifacts").exists()


def test_the_file_is_read_with_the_safe_loader_limits(workbench):
    bomb = 'a: &a ["x","x","x","x","x","x","x","x","x","x"]\n' + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdef", "bcdefg", strict=True)
    )
    with pytest.raises(FileFormatError, match=r"batch.yaml line \d+, column \d+: more than 200,000 values"):
        load_batch(workbench, write(workbench, bomb))
    with pytest.raises(FileFormatError, match=r"batch\.yaml line 2, column 1: expected the node content"):
        load_batch(workbench, write(workbench, "- [\n"))
    with pytest.raises(RequestError, match=r"batch file .*missing\.yaml does not exist"):
        load_batch(workbench, workbench.root / "missing.yaml")


def test_executor_settings_come_from_params_and_are_checked(workbench):
    params = workbench.root / "params.yaml"
    params.write_text(
        params.read_text()
        + "batch:\n  executor: ray\n  workers: 3\n  ray: {gpus_per_actor: 1, max_restarts: 5}\n"
    )
    wb = Workbench.open(workbench.root)
    config = executor_config(wb)
    assert (config.executor, config.workers, config.gpus_per_actor, config.max_restarts) == ("ray", 3, 1, 5)
    assert executor_config(wb, executor="local", workers=None).executor == "local"
    with pytest.raises(ParamsError, match=r"batch.executor must be one of local, ray, got 'slurm'."):
        executor_config(wb, executor="slurm")
    with pytest.raises(ParamsError, match=r"batch.workers must be a whole number in \[1, 1024\], got 0."):
        executor_config(wb, workers=0)
    assert config.results == "shared"
    with pytest.raises(
        ParamsError, match=r"^batch\.ray\.results must be one of shared, driver \(shared: a folder every worker "
        r"sees; driver: the files come back to this machine\), got 'nfs'\.$",
    ):  # fmt: skip
        executor_config(wb, results="nfs")
    assert executor_config(wb, results="driver").results == "driver"
    params.write_text(params.read_text() + "  color: red\n")
    with pytest.raises(
        ParamsError, match=r"params\.yaml: batch\.color is not a batch setting; allowed: executor"
    ):
        executor_config(Workbench.open(workbench.root))


def test_the_resource_check_refuses_an_actor_no_node_can_hold():
    nodes = [{"CPU": 2.0, "memory": 1e9}, {"CPU": 16.0}]
    assert fit_actors(nodes, cpus=1, gpus=0) == 18 and fit_actors(nodes, cpus=4, gpus=0) == 4
    assert check_cluster(nodes, ExecutorConfig(workers=2), "127.0.0.1:6379") == 2  # no more than asked
    with pytest.raises(ClusterError) as exc:
        check_cluster(nodes, ExecutorConfig(gpus_per_actor=1), "127.0.0.1:6379")
    assert str(exc.value) == (
        "ray: no node of the cluster at 127.0.0.1:6379 has 1 CPU and 1 GPU for one actor (nodes: 2 CPU, 0 GPU; "
        "16 CPU, 0 GPU). Lower batch.ray.cpus_per_actor / gpus_per_actor in params.yaml, or add a node that "
        "has them (ray start --address ...)."
    )


def test_the_summary_counts_done_cached_and_failed():
    results = (
        RowResult(0, "rows[0]", "a" * 16, False, None, 1.0),
        RowResult(1, "rows[1]", "b" * 16, True, None, 0.1),
        RowResult(2, "rows[2]", None, False, "boom", 0.1),
    )
    report = BatchReport("local", results, seconds=60.0, startup_s=2.0, first_row_s=12.5)
    assert (report.done, report.cached, [r.where for r in report.failed]) == (1, 1, ["rows[2]"])
    assert report.table()[1] == ("local", "3", "1", "1", "1", "60.0", "2.0", "12.5", "2.0")
    assert report.to_json()["rows"][2]["error"] == "boom"


def test_the_cli_refuses_a_bad_batch_in_one_line_and_never_imports_ray(workbench):
    write(workbench, "- {prompt: x, duration_s: -1}\n")
    probe = (
        "import sys; from harmonia.cli import main; code = main(['batch', 'batch.yaml']); "
        "print('ray imported' if 'ray' in sys.modules else 'no ray', code)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HARMONIA_ROOT": str(workbench.root)}
    proc = subprocess.run([sys.executable, "-c", probe], cwd=workbench.root, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.stdout.strip() == "no ray 2", proc.stderr
    assert (
        proc.stderr.strip() == "error: batch.yaml rows[0]: duration_s must be > 0 and <= 300 seconds, got -1."
    )
    assert not (workbench.root / "artifacts").exists()


def test_a_report_path_that_cannot_be_written_is_refused_before_any_row_runs(music_wb, monkeypatch, capsys):
    from harmonia.cli import main

    write(music_wb, "- {prompt: x, model: tiny-musicgen, duration_s: 0.5, seed: 1}\n")
    monkeypatch.chdir(music_wb.root)
    monkeypatch.setenv("HARMONIA_ROOT", str(music_wb.root))
    assert main(["batch", "batch.yaml", "--report", "nowhere/report.json"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --report nowhere/report.json: the folder nowhere does not exist; "
        "give a file path in an existing folder."
    )
    assert main(["batch", "batch.yaml", "--report", "models"]) == 2
    assert "error: --report models: is a folder;" in capsys.readouterr().err
    assert not (music_wb.root / "artifacts").exists() or not list_artifacts(music_wb)


# -- running ----------------------------------------------------------------------------------
def test_a_returned_artifact_is_installed_whole_only_when_every_sha256_matches(
    music_wb, tmp_path, monkeypatch
):
    monkeypatch.setenv("HARMONIA_SCRATCH", str(tmp_path / "scratch"))
    (row,) = load_batch(
        music_wb, write(music_wb, "- {prompt: x, model: tiny-musicgen, duration_s: 0.5, seed: 3}\n")
    )
    result, sent = run_row_returning(music_wb, row)
    assert result.error is None and not result.cached
    assert not list((tmp_path / "scratch").rglob("*.*")), "the scratch copy was left behind"
    assert not (music_wb.root / "artifacts").exists() or not list_artifacts(music_wb)  # not in the store
    assert "manifest.json" in sent and any(k.endswith(".wav") for k in sent)
    wav = next(k for k in sent if k.endswith(".wav"))

    # a file whose bytes are not the sha256 sent with them: refused, nothing installed, no staging left
    bad = {**sent, wav: {**sent[wav], "data": sent["manifest.json"]["data"]}}
    with pytest.raises(
        ArtifactError, match=rf"^artifact {result.artifact}: {wav} arrived with a different sha256"
    ):
        install_files(music_wb, result.artifact, bad)
    # bytes and sha256 consistent with each other, but not the manifest's: refused too
    bad = {**sent, wav: sent["manifest.json"]}
    with pytest.raises(
        ArtifactError, match=r"does not match the sha256 its manifest records; nothing installed\.$"
    ):
        install_files(music_wb, result.artifact, bad)
    # a file missing
    with pytest.raises(ArtifactError, match=r"the files returned are not the ones its manifest lists"):
        install_files(music_wb, result.artifact, {k: v for k, v in sent.items() if k != wav})
    assert list_artifacts(music_wb) == [] and not list((music_wb.root / "artifacts").iterdir())

    # the real files: installed, intact, the same id a plain generation finds; a second install keeps it
    assert install_files(music_wb, result.artifact, sent) is True
    art = load_artifact(music_wb, result.artifact)
    assert intact(art) and hashlib.sha256(art.file(wav).read_bytes()).hexdigest() == sent[wav]["sha256"]
    plain = generate(music_wb, "tiny-musicgen", MusicRequest("x", duration_s=0.5, seed=3), threads=1)
    assert plain.cached and plain.artifact.id == result.artifact
    assert install_files(music_wb, result.artifact, sent) is False
    # a row whose id the driver holds is a cache hit on the actor: nothing generated, nothing returned
    again, none = run_row_returning(music_wb, row, held=frozenset({result.artifact}))
    assert (again.artifact, again.cached, none) == (result.artifact, True, None)
    # over the size limit: the row fails naming the limit, nothing returned, scratch empty
    over, none = run_row_returning(music_wb, row, limit=1000)
    assert (over.artifact, none) == (None, None)
    assert over.error.startswith("the artifact's files are ")
    assert (
        "bytes, over the limit of 1,000 bytes a row may return to the driver (batch.ray.results: driver)"
        in (over.error)
    )
    assert not list((tmp_path / "scratch").rglob("*.*"))


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _session(sid: int) -> list[int]:
    """Every process of a session (the head's: it was started in a session of its own)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.getsid(int(proc.name)) == sid:
                    found.append(int(proc.name))
            except (OSError, ProcessLookupError):
                continue
    return found


def _actor_pids(sid: int) -> list[int]:
    """The head's Ray Data actors running our rows (their title names the class)."""
    found = []
    for pid in _session(sid):
        try:
            if b"HarmoniaRows" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def ray_head():
    """A real Ray head on 127.0.0.1 (2 CPUs, token auth, its own ports and temp folder), stopped at the end
    of the module: started once (about 11 s) for the tests that use it; each runs a job of its own on it.

    The head runs in a session of its own (``ray start --block``); its workers get process groups
    of their own but stay in that session, so the fixture ends exactly that session's processes,
    by pid, never with ``ray stop`` (which stops every Ray on the machine).
    """
    pytest.importorskip("ray")
    gcs, *port = _free_ports(7)
    temp = tempfile.mkdtemp(prefix="hr-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip
    args = [
        str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
        f"--port={gcs}", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", f"--temp-dir={temp}",
        f"--dashboard-port={port[0]}", f"--dashboard-agent-listen-port={port[1]}",
        f"--dashboard-agent-grpc-port={port[2]}", f"--runtime-env-agent-port={port[3]}",
        f"--metrics-export-port={port[4]}", f"--node-manager-port={port[5]}", "--disable-usage-stats",
    ]  # fmt: skip
    head = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(head.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 90
        while not any("Ray runtime started" in line for line in lines):
            assert head.poll() is None and time.monotonic() < deadline, "".join(lines)[-2000:]
            time.sleep(0.2)
        yield {**env, "RAY_ADDRESS": f"127.0.0.1:{gcs}"}, head.pid
    finally:
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 0)):  # the head's processes, by pid
            for pid in _session(head.pid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(wait)
        head.wait(timeout=10)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_ray_makes_the_local_pools_bytes_with_a_bad_row_and_a_killed_actor(music_wb, tmp_path, ray_head):
    env, head = ray_head
    text = BATCH.replace("duration_s: 0.5", "duration_s: 1.0")
    # 1. The local pool, in a workbench of its own: the reference bytes, the bad row recorded; the
    # worker that sent the first result is killed, which breaks the pool: its rows run on a fresh one.
    local_root = tmp_path / "local"
    measured_once(music_wb)
    shutil.copytree(music_wb.root, local_root)
    local_wb = Workbench.open(local_root)
    path = write(local_wb, text)
    seen = []

    def kill_the_first_worker(result):
        seen.append(result)
        if len(seen) == 1:
            os.kill(result.worker, signal.SIGKILL)

    local = run_batch(
        local_wb, load_batch(local_wb, path), ExecutorConfig(workers=2), on_row=kill_the_first_worker
    )
    assert len(seen) == 6 and local.done + local.cached == 5  # a row written just before the kill: cached
    assert any(n.startswith("a worker died; ") for n in local.notes), local.notes
    (bad,) = local.failed
    assert bad.where == "rows[1]" and bad.error.startswith("melody: cannot read nothere.wav as audio")
    arts = {a.id: a for a in list_artifacts(local_wb)}
    assert set(arts) == {r.artifact for r in local.results if r.artifact}
    assert all(intact(a) and a.manifest.runtime.threads == 1 for a in arts.values())
    assert [arts[r.artifact].seed for r in local.results if r.artifact] == [1, 0, 1, 0, 1]
    # the same row through the plain generation path: the same id, found
    request = MusicRequest("calm piano", duration_s=1.0, seed=1)
    plain = generate(local_wb, "tiny-musicgen", request, threads=1)
    assert plain.cached and plain.artifact.id == local.results[0].artifact

    # 2. The same batch through `harmonia batch --executor ray` on the head; one actor killed mid-run.
    write(music_wb, text)
    report_path = music_wb.root / "report.json"
    cli = subprocess.Popen(
        [sys.executable, "-m", "harmonia", "batch", "batch.yaml", "--executor", "ray", "--report", str(report_path)],
        cwd=music_wb.root, env={**env, "HARMONIA_ROOT": str(music_wb.root)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    killed, deadline = None, time.monotonic() + 240
    while killed is None and cli.poll() is None and time.monotonic() < deadline:
        arts_dir = music_wb.root / "artifacts"
        if arts_dir.is_dir() and any(not p.name.startswith(".") for p in arts_dir.iterdir()):  # a row is done
            pids = _actor_pids(head)
            if pids:
                killed = pids[0]
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    stdout, stderr = cli.communicate(timeout=max(10, deadline - time.monotonic()))
    assert killed is not None, "no actor was seen running before the batch ended"
    assert cli.returncode == 1, stderr[-3000:]  # 1: a row failed; everything else was made
    assert f"failed: {BAD_ROW}" in stdout
    report = json.loads(report_path.read_text())
    # 5 made; a row whose actor died after writing its artifact finds it on its retry (cached)
    assert (report["done"] + report["cached"], report["failed"]) == (5, 1)

    # 3. Every good row: the same id and the same bytes as the local pool's; nothing half-written.
    assert [r["artifact"] for r in report["rows"]] == [r.artifact for r in local.results]
    assert outputs(music_wb) == outputs(local_wb)
    assert all(intact(load_artifact(music_wb, a)) for a in outputs(music_wb))
    assert not [p.name for p in (music_wb.root / "artifacts").iterdir() if p.name.startswith(".")]

    # 4. A re-run skips what exists: every good row cached, the bad row failing the same way.
    again = run_batch(local_wb, load_batch(local_wb, path), ExecutorConfig(workers=1))
    assert (again.done, again.cached, len(again.failed)) == (0, 5, 1)
    assert [r.artifact for r in again.results] == [r.artifact for r in local.results]


@pytest.mark.slow
def test_ray_results_driver_returns_the_files_and_installs_the_local_pools_bytes(
    music_wb, tmp_path, ray_head
):
    """batch.ray.results: driver: actors write only to their scratch store; the driver installs each artifact."""
    env, _ = ray_head
    local_root = tmp_path / "local"
    measured_once(music_wb)
    shutil.copytree(music_wb.root, local_root)
    local_wb = Workbench.open(local_root)
    text = (
        BATCH.split("product:")[0] + "  - {prompt: funk drums, seed: 0}\n  - {prompt: warm bass, seed: 1}\n"
    )
    local = run_batch(local_wb, load_batch(local_wb, write(local_wb, text)), ExecutorConfig(workers=1))
    assert (local.done, len(local.failed)) == (3, 1)
    # the driver already holds the first row's artifact: it must come back as a cache hit, not be made again
    first = local.results[0].artifact
    shutil.copytree(local_root / "artifacts" / first, music_wb.root / "artifacts" / first)
    held_manifest = (music_wb.root / "artifacts" / first / "manifest.json").read_bytes()

    params = music_wb.root / "params.yaml"
    params.write_text(params.read_text() + "batch:\n  ray: {results: driver}\n")
    write(music_wb, text)
    scratch = tmp_path / "scratch"
    proc = subprocess.run(
        [sys.executable, "-m", "harmonia", "batch", "batch.yaml", "--executor", "ray", "--report", "report.json"],
        cwd=music_wb.root, env={**env, "HARMONIA_ROOT": str(music_wb.root), "HARMONIA_SCRATCH": str(scratch)},
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]  # 1: the bad row failed; everything else was made
    assert f"failed: {BAD_ROW}" in proc.stdout
    report = json.loads((music_wb.root / "report.json").read_text())
    assert (report["done"], report["cached"], report["failed"]) == (2, 1, 1)
    assert report["rows"][0]["cached"] is True
    # the same ids and bytes as the local pool's, in the driver's store, whole; the held one untouched
    assert [r["artifact"] for r in report["rows"]] == [r.artifact for r in local.results]
    assert outputs(music_wb) == outputs(local_wb)
    assert all(intact(load_artifact(music_wb, a)) for a in outputs(music_wb))
    assert (music_wb.root / "artifacts" / first / "manifest.json").read_bytes() == held_manifest
    assert not [p.name for p in (music_wb.root / "artifacts").iterdir() if p.name.startswith(".")]
    # the actors wrote only to scratch, and removed every row's copy
    assert scratch.is_dir() and not [p for p in scratch.rglob("*") if p.is_file()]


# -- the pipeline's generate stage ------------------------------------------------------------
def test_the_generate_stage_refuses_an_unknown_executor_before_any_work(music_wb):
    from harmonia.datasets import build_dataset
    from harmonia.pipeline import stage_generate

    params = yaml.safe_load((music_wb.root / "params.yaml").read_text())
    params.update(
        pipeline={"seeds": [0], "executor": "slurm"},
        prompt_sets={"eval": {"dataset": "eval-prompts", "limit": 2}},
    )
    (music_wb.root / "params.yaml").write_text(yaml.safe_dump(params))
    wb = Workbench.open(music_wb.root)
    build_dataset(wb, "eval-prompts")
    with pytest.raises(ParamsError, match=r"pipeline.executor must be inline, local or ray, got 'slurm'\."):
        stage_generate(wb, "eval", "tiny-musicgen", music_wb.root / "generated")
    assert not (music_wb.root / "artifacts").exists()


@pytest.mark.slow
def test_the_generate_stage_on_the_local_pool_makes_the_inline_stages_takes(music_wb, tmp_path):
    from harmonia.datasets import build_dataset
    from harmonia.pipeline import stage_generate

    params = yaml.safe_load((music_wb.root / "params.yaml").read_text())
    params["music"].update(duration_s=0.5, threads=1, batch_size=2)
    params.update(pipeline={"seeds": [0, 1]}, prompt_sets={"eval": {"dataset": "eval-prompts", "limit": 3}})
    (music_wb.root / "params.yaml").write_text(yaml.safe_dump(params))
    other = tmp_path / "pool"
    measured_once(music_wb)
    shutil.copytree(music_wb.root, other)
    params["pipeline"]["executor"] = "local"
    (other / "params.yaml").write_text(yaml.safe_dump(params))
    indexes, ticks = [], []
    for root in (music_wb.root, other):
        wb = Workbench.open(root)
        build_dataset(wb, "eval-prompts")
        progress = (lambda done, total: ticks.append((done, total))) if root == other else None
        indexes.append(stage_generate(wb, "eval", "tiny-musicgen", root / "generated", progress=progress))
    inline, pool = indexes
    assert len(pool["takes"]) == 6 and pool["takes"] == inline["takes"]  # same artifacts, files and sha256
    assert ticks == [(1, 4), (2, 4), (3, 4), (4, 4)]  # 2 seeds x 2 generations of up to 2 prompts
