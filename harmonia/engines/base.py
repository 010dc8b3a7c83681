"""The engine protocol and what every engine shares: device and dtype choice, verified loading,
seeding, thread pinning.

An engine is loaded once from a local snapshot and then called many times; a call never
changes the engine. Each call seeds its own random stream (the caller's RNG state is left
as it was) and runs with a pinned number of CPU threads, because on CPU the thread count
changes the bits of the result.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from harmonia.errors import RequestError, VerificationError
from harmonia.inventory import Inventory
from harmonia.snapshots import require_snapshot, require_verified
from harmonia.workbench import SnapshotSpec, Workbench

Progress = Callable[[int, int], None]
"""``progress(done, total)``: called after every decoding step; raising stops the generation."""

PICKLED = (".bin", ".pt", ".ckpt", ".pth", ".pkl", ".pickle")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SEED_LIMIT = 2**63


class Engine(Protocol):
    """What every engine offers."""

    name: str
    sample_rate: int

    def generate(self, request: Any, progress: Progress | None = None) -> Any: ...


@dataclass(frozen=True)
class LoadedModel:
    """Which snapshot an engine runs, on what, and how long loading took."""

    name: str
    path: Path
    spec: SnapshotSpec
    inventory: Inventory
    device: str  # "cpu", "cuda", "cuda:1", "mps"
    dtype: str  # a key of DTYPES
    threads: int  # CPU threads used by every generate() call
    load_s: float
    precision: str = "exact"  # the decoder's precision mode (see engines/musicgen.py)

    def describe(self) -> dict:
        """The manifest's model entry."""
        src = self.inventory.source
        return {
            "name": self.name,
            "repo": src.repo,
            "revision": src.revision,
            "source": src.type,
            "builder": src.builder,
            "seed": src.seed,
            "inventory_digest": self.inventory.digest,
        }


def pick_device(device: str | None = None) -> torch.device:
    """``None``/"auto": cuda, then mps, then cpu. An explicit device must exist."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise RequestError(f"device must be auto, cpu, cuda, cuda:N or mps, got {device!r}.") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise RequestError(
            "device 'cuda' was asked for but no CUDA GPU is available; use device='cpu' or 'auto'."
        )
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise RequestError("device 'mps' was asked for but MPS is not available; use device='cpu' or 'auto'.")
    return chosen


def pick_dtype(dtype: str | None, device: torch.device) -> str:
    """float32 unless asked otherwise (the reproducible default); float16 only on a GPU."""
    dtype = dtype or "float32"
    if dtype not in DTYPES:
        raise RequestError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
    if dtype == "float16" and device.type == "cpu":
        raise RequestError("dtype float16 is not supported on the CPU; use float32 or bfloat16.")
    return dtype


def pick_threads(threads: int | None) -> int:
    if threads is None:
        return torch.get_num_threads()
    if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= 512:
        raise RequestError(f"threads must be an integer in [1, 512], got {threads!r}.")
    return threads


def open_snapshot(
    wb: Workbench, name: str, engine: str, allow_pickle: bool = False
) -> tuple[SnapshotSpec, Path, Inventory]:
    """A declared model snapshot, present and verified, for ``engine``; clear errors otherwise."""
    spec = wb.spec("model", name)
    if spec.engine is not None and spec.engine != engine:
        raise RequestError(
            f"Model '{name}' is for the {spec.engine} engine, not {engine}. Pick a {engine} model."
        )
    path = require_snapshot(wb, "model", name)
    inventory = require_verified(wb, "model", name)
    pickled = [f.path for f in inventory.files if f.path.endswith(PICKLED)]
    if pickled and not allow_pickle:
        raise VerificationError(
            f"Model '{name}' contains pickled weights ({', '.join(pickled[:3])}); Harmonia loads safetensors "
            "only. Fetch it without --allow-pickle, or pass allow_pickle=True if you trust the files."
        )
    return spec, path, inventory


def choose_seed() -> int:
    """A fresh seed for requests that give none (it is recorded, so the result stays reproducible)."""
    return secrets.randbelow(2**31)


def check_seed(seed: Any) -> int:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < SEED_LIMIT:
        raise RequestError(
            f"seed must be an integer in [0, 2**63), got {seed!r}. Leave it unset to draw one."
        )
    return seed


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block on its own random stream from ``seed``; the caller's RNG state is restored after."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if device.type == "cuda" else "cuda"):
        torch.manual_seed(seed)
        yield


@contextmanager
def pinned_threads(threads: int) -> Iterator[None]:
    """Run the block with exactly ``threads`` intra-op CPU threads, then restore the caller's setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Timer:
    """``with Timer() as t: ...; t.seconds``."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' warnings and progress bars for the block, then restore them.

    MusicGen's pad and start ids lie one past the codebook by design; transformers warns
    about that on every load, and draws a bar per load and save.
    """
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
