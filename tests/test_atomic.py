"""Atomic folders under real concurrency: several processes, kills, and a reader during replaces."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harmonia import atomic
from harmonia.atomic import discard, install, remove_stale, staging_dir
from tests.conftest import REPO_ROOT

# A writer process: wait for the start signal, write 20 files slowly into a staging folder,
# install it as NAME, and print what it did. Mode "hang" prints the staging folder and sleeps;
# "write-without-renameat2" installs the portable way.
WRITER = """
import os, sys, time
from pathlib import Path
from harmonia import atomic
from harmonia.atomic import discard, install, staging_dir
parent, name, who, go, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4]), sys.argv[5]
if mode == "write-without-renameat2":
    atomic._EXCHANGE_WORKS = False
while not go.exists():
    time.sleep(0.002)
staging = staging_dir(parent, name)
if mode == "hang":
    (staging / "half.bin").write_bytes(b"x" * 1000)
    print(staging, flush=True)
    time.sleep(120)
try:
    for i in range(20):
        (staging / f"part-{i}.txt").write_text(who)
        time.sleep(0.005)
    (staging / "done.txt").write_text(who)
    install(staging, parent / name)
finally:
    discard(staging)
print("installed", who, flush=True)
"""

# A replacer process: install NAME again and again, ROUNDS times.
REPLACER = """
import sys
from pathlib import Path
from harmonia.atomic import discard, install, staging_dir
parent, name, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for i in range(rounds):
    staging = staging_dir(parent, name)
    (staging / "done.txt").write_text(str(i))
    try:
        install(staging, parent / name)
    finally:
        discard(staging)
"""


def _spawn(script: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _helpers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _assert_whole(folder: Path) -> str:
    """One writer's complete folder: 20 parts and done.txt, all from the same writer."""
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(["done.txt", *(f"part-{i}.txt" for i in range(20))])
    writers = {p.read_text() for p in folder.iterdir()}
    assert len(writers) == 1
    return writers.pop()


@pytest.mark.parametrize("mode", ["write", "write-without-renameat2"])
def test_six_processes_writing_one_name_all_succeed(tmp_path, mode):
    go = tmp_path / "go"
    procs = [_spawn(WRITER, tmp_path, "take", f"w{i}", go, mode) for i in range(6)]
    time.sleep(0.5)  # let every interpreter start and wait at the line
    go.touch()
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, [err[-600:] for _, err in outs]
    assert sorted(out.split()[1] for out, _ in outs) == [f"w{i}" for i in range(6)]
    assert _assert_whole(tmp_path / "take") in {f"w{i}" for i in range(6)}
    assert _helpers(tmp_path) == []


def test_a_killed_writer_leaves_a_stale_folder_the_next_writer_removes(tmp_path):
    go = tmp_path / "go"
    go.touch()
    proc = _spawn(WRITER, tmp_path, "take", "w", go, "hang")
    stale = Path(proc.stdout.readline().strip())
    assert stale.is_dir() and stale.name.startswith(".take.partial-")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert stale.is_dir()  # a kill leaves it behind...
    fresh = staging_dir(tmp_path, "take")  # ...and the next writer of the name removes it
    assert not stale.exists() and fresh.is_dir()
    discard(fresh)
    assert _helpers(tmp_path) == []


def test_a_live_writers_folder_is_never_removed(tmp_path):
    go = tmp_path / "go"
    go.touch()
    proc = _spawn(WRITER, tmp_path, "take", "w", go, "hang")
    try:
        live = Path(proc.stdout.readline().strip())
        mine = staging_dir(tmp_path, "take")
        assert live.is_dir() and (live / "half.bin").stat().st_size == 1000
        (mine / "done.txt").write_text("mine")
        install(mine, tmp_path / "take")
        assert remove_stale(tmp_path, "take") == [] and live.is_dir()
    finally:
        proc.kill()
        proc.wait(10)
    assert remove_stale(tmp_path, "take") == [live]


def test_a_folder_from_this_process_is_kept_for_its_thread(tmp_path):
    first = staging_dir(tmp_path, "take")
    second = staging_dir(tmp_path, "take")
    assert first.is_dir() and second.is_dir() and first != second
    discard(first)
    discard(second)
    assert _helpers(tmp_path) == []


def test_a_locked_folder_of_a_dead_pid_is_kept(tmp_path):
    # a child that inherited the lock keeps the folder alive even when the pid in its name is gone
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(10)
    folder = tmp_path / f".take.partial-{dead.pid}-1-0123abcd"
    folder.mkdir()
    fd = atomic._claim(folder)
    try:
        assert remove_stale(tmp_path, "take") == [] and folder.is_dir()
    finally:
        os.close(fd)
    assert remove_stale(tmp_path, "take") == [folder]


def test_stale_old_folders_of_a_killed_replace_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    start = atomic._process_start(dead.pid)
    dead.kill()
    dead.wait(10)
    old = tmp_path / f".take.old-{dead.pid}-{start}-0123abcd"
    (old / "sub").mkdir(parents=True)
    (old / "sub/weights.bin").write_bytes(b"w" * 100)
    mine = tmp_path / f".take.old-{os.getpid()}-{atomic._process_start(os.getpid())}-89abcdef"
    mine.mkdir()  # a live process's replace in progress
    other = tmp_path / ".take.old-notours"
    other.mkdir()
    assert remove_stale(tmp_path, "take") == [old]
    assert sorted(_helpers(tmp_path)) == sorted([mine.name, other.name])


def test_a_reader_never_sees_the_folder_missing_during_replaces(tmp_path):
    final = tmp_path / "take"
    first = staging_dir(tmp_path, "take")
    (first / "done.txt").write_text("start")
    install(first, final)
    procs = [_spawn(REPLACER, tmp_path, "take", 400)]
    checks = misses = 0
    while any(p.poll() is None for p in procs):
        checks += 1
        if not os.path.isdir(final):
            misses += 1
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0], [err[-600:] for _, err in outs]
    assert misses == 0 and checks > 1000
    assert sorted(p.name for p in final.iterdir()) == ["done.txt"]
    assert _helpers(tmp_path) == []


@pytest.mark.parametrize("exchange", [True, False])
def test_install_replaces_whole_with_and_without_renameat2(tmp_path, monkeypatch, exchange):
    monkeypatch.setattr(atomic, "_EXCHANGE_WORKS", exchange)
    final = tmp_path / "take"
    for content in ("one", "two"):
        staging = staging_dir(tmp_path, "take")
        (staging / f"{content}.txt").write_text(content)
        install(staging, final)
        discard(staging)
        assert [p.name for p in final.iterdir()] == [f"{content}.txt"]
    assert _helpers(tmp_path) == []
    assert atomic._LOCKS == {}


def test_install_of_a_missing_staging_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        install(tmp_path / ".nothing", tmp_path / "take")
    assert list(tmp_path.iterdir()) == []


def test_a_writer_sweeps_stale_folders_of_other_names_too(tmp_path):
    go = tmp_path / "go"
    go.touch()
    killed = _spawn(WRITER, tmp_path, "abandoned-id", "w", go, "hang")
    live = _spawn(WRITER, tmp_path, "busy-id", "w", go, "hang")
    try:
        stale = Path(killed.stdout.readline().strip())
        busy = Path(live.stdout.readline().strip())
        killed.kill()
        killed.wait(10)
        fresh = staging_dir(tmp_path, "another-id")
        assert not stale.exists() and busy.is_dir() and fresh.is_dir()
        discard(fresh)
    finally:
        live.kill()
        live.wait(10)
