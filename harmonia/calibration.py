"""Fast paths chosen by measurement on the machine at hand, not by assumption.

Some ways of computing the same thing are faster on one CPU and slower on another (a
few-row product as ``F.linear`` runs on one thread in this torch build on an AMD EPYC, and
beat ``W @ x.T`` on an Intel Xeon with AMX). :func:`choose` times each candidate on the
real weights and shapes, keeps only candidates whose results agree with the reference's
(bit for bit by default; the caller may allow rounding or quantisation differences), and caches the winner
per CPU model, torch version, thread count and shape in ``.harmonia/calibration.json``. An
environment variable forces a path (``HARMONIA_<NAME>=<path>``). A path whose bits may
differ is part of the artifact id (the engine puts it in its runtime), and ``reproduce``
replays the recorded path, so a choice never changes bytes under an id.

This module knows timing and caching; it knows nothing about models or artifacts.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from harmonia.errors import RequestError

CACHE_FILE = "calibration.json"
REPEATS = 7  # best of; the first two calls of each candidate are warm-up
MIN_GAIN = 1.10  # another path must beat the reference by 10 %: timing noise never flips a choice


@dataclass(frozen=True)
class Choice:
    """Which path a calibration picked, and why."""

    name: str  # what was chosen for, e.g. "few_row_products"
    path: str  # the chosen candidate
    how: str  # "measured", "cached" or "forced"
    seconds: dict[str, float]  # best time per candidate (empty when forced)

    def describe(self) -> str:
        """One line for the manifest: the path, how it was chosen, and the measured ratio."""
        if not self.seconds:
            return f"{self.path} ({self.how})"
        times = ", ".join(f"{k} {v * 1000:.3g} ms" for k, v in sorted(self.seconds.items()))
        return f"{self.path} ({self.how}: {times})"


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def known(state_dir: Path, name: str, shape: str, threads: int, paths: tuple[str, ...]) -> Choice | None:
    """The forced or cached choice, without measuring (None: it must be measured first)."""
    forced = os.environ.get(f"HARMONIA_{name.upper()}")
    if forced and forced != "auto":
        if forced not in paths:
            raise RequestError(
                f"HARMONIA_{name.upper()} must be auto or one of {', '.join(paths)}, got {forced!r}."
            )
        return Choice(name, forced, "forced", {})
    entry = _read(state_dir / CACHE_FILE).get(_key(name, shape, threads))
    if isinstance(entry, dict) and entry.get("path") in paths:
        return Choice(name, entry["path"], "cached", entry.get("seconds", {}))
    return None


def _key(name: str, shape: str, threads: int) -> str:
    return f"{cpu_model()} | torch {torch.__version__} | {threads} threads | {name} {shape}"


def choose(
    state_dir: Path,
    name: str,
    shape: str,
    candidates: dict[str, Callable[[], list[torch.Tensor]]],
    reference: str,
    agree: Callable[[torch.Tensor, torch.Tensor], bool] = torch.equal,
) -> Choice:
    """The fastest candidate whose outputs agree with the reference's (cached per machine).

    Another candidate wins only when it is at least 10 % faster than the reference (the
    plain library's path); processes that start together wait for one measurement.

    Args:
        state_dir: the workbench's private folder (``.harmonia/``).
        name: what is being chosen; ``HARMONIA_<NAME>`` (upper case) forces a candidate.
        shape: what the timing depends on besides the CPU, torch and threads (e.g. "24x6x1024x2").
        candidates: name -> a function computing the same outputs a different way.
        reference: the candidate whose results define "correct" (the plain library's path).
        agree: whether a candidate's output tensor agrees with the reference's (default: the
            same bits); a candidate that disagrees is never chosen.
    """
    found = known(state_dir, name, shape, torch.get_num_threads(), tuple(candidates))
    if found is not None:
        return found
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / f".{CACHE_FILE}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # processes starting together measure once and agree
        found = known(state_dir, name, shape, torch.get_num_threads(), tuple(candidates))
        return found or _measure(state_dir, name, shape, candidates, reference, agree)


def _measure(state_dir, name, shape, candidates, reference, agree) -> Choice:
    expected = candidates[reference]()
    seconds = {}
    for label, run in candidates.items():
        out = run()
        if label != reference and not all(agree(a, b) for a, b in zip(out, expected, strict=True)):
            continue  # a different result is never a faster path to the same one
        run()
        best = float("inf")
        for _ in range(REPEATS):
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
        seconds[label] = round(best, 6)
    path = min(seconds, key=seconds.get)
    if seconds[reference] < seconds[path] * MIN_GAIN:
        path = reference  # not clearly faster: keep the plain library's path
    cache = state_dir / CACHE_FILE
    entries = _read(cache)
    entries[_key(name, shape, torch.get_num_threads())] = {"path": path, "seconds": seconds}
    _write(cache, entries)
    return Choice(name, path, "measured", seconds)


def _read(path: Path) -> dict:
    from harmonia.safeload import load_json

    try:
        data = load_json(path, str(path), max_bytes=1 << 20)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # a missing or damaged cache is measured again


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _speed_key(name: str, shape: str, threads: int) -> str:
    return f"{_key(name, shape, threads)} | seconds per step"


def step_seconds(state_dir: Path, name: str, shape: str, threads: int) -> dict[str, float] | None:
    """The seconds per step measured on this machine for ``name`` at ``shape`` (None: never measured).

    Returns ``{"step_s": ..., "other_s": ...}`` (``other_s``, what a run spends outside its
    steps, may be missing when only a step was measured). Cached per CPU model, torch version
    and thread count, in the same file as the fast paths.
    """
    entry = _read(state_dir / CACHE_FILE).get(_speed_key(name, shape, threads))
    if isinstance(entry, dict) and isinstance(entry.get("step_s"), int | float) and entry["step_s"] > 0:
        return {k: float(v) for k, v in entry.items() if isinstance(v, int | float)}
    return None


def record_step_seconds(
    state_dir: Path, name: str, shape: str, threads: int, step_s: float, other_s: float | None = None
) -> None:
    """Keep a measured seconds per step (and, from a whole run, the seconds outside its steps)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / f".{CACHE_FILE}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cache = state_dir / CACHE_FILE
        entries = _read(cache)
        key = _speed_key(name, shape, threads)
        old = entries.get(key) if isinstance(entries.get(key), dict) else {}
        entry = {"step_s": round(step_s, 6)}
        other = other_s if other_s is not None else old.get("other_s")
        if isinstance(other, int | float):
            entry["other_s"] = round(float(other), 6)
        entries[key] = entry
        _write(cache, entries)
