"""The engine contract and what every engine shares: runtime choice, limits, verified loading,
seeding, thread pinning, progress and cancel.

An engine module declares one engine class with:

- ``name`` (the registry key, params.yaml's ``engine:``), ``kind`` (music, sample, song, stems,
  transcript, video, text), ``code_version`` (bumped whenever a change of the engine's own
  code changes output bytes) and ``packages`` (the distributions whose versions change them);
- ``request_type``: a frozen dataclass whose numeric fields carry their limits
  (:func:`limit`), with ``to_json(inputs)`` / ``from_json(data, inputs)`` and ``inputs()``
  naming its media inputs (recorded by sha256, never by path alone);
- ``check_runtime(runtime)``; ``check(request, snapshot)``: every check of the request that
  needs no loaded model, run before the cache lookup; ``check_resources(request, snapshot)``:
  what only a generation needs (memory, context), run after it; ``fast_paths(wb, snapshot,
  runtime)``: the calibrated paths a load will take (part of the id; None when the load must
  measure them, () for none); ``load(wb, name, runtime)``; ``generate(request, progress,
  cancel)`` returning a result whose ``takes`` are media (harmonia.media), with ``inputs``,
  ``request``, ``steps``, ``generate_s`` and ``details()`` for the manifest. An engine whose
  old artifacts had other ids may offer ``legacy_identity(identity, runtime)``, and one whose
  fast paths had defaults before they were recorded ``identity_paths(runtime)`` (the paths
  the id names; default: all of them) and ``replayed_paths(runtime)`` (the paths
  ``reproduce`` runs for a manifest; default: those recorded); one whose
  model reads other snapshots (audiocraft: a T5 text encoder, an MBD decoder) offers
  ``companions(wb, model, request)``: role -> verified inventory, part of the id and the licences.

An engine is loaded once from a local snapshot and then called many times; a call never
changes the engine. Each call seeds its own random stream (the caller's RNG state is left
as it was) and runs with a pinned number of CPU threads, because on CPU the thread count
changes the bits of the result. Both are process-global in torch, so every load and
generation in a process holds :data:`TORCH_LOCK`: two threads (the studio's and the
gallery's) never interleave their steps.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

from harmonia.errors import Cancelled, RequestError, VerificationError
from harmonia.inventory import Inventory, Source
from harmonia.snapshots import require_loadable, require_snapshot
from harmonia.workbench import PICKLE_PATTERNS, SnapshotSpec, Workbench

Progress = Callable[[int, int], None]
"""``progress(done, total)``: called after every step; raising stops the generation."""
Cancel = threading.Event | Callable[[], bool]
"""Set (or returning True) to stop a generation at its next step; nothing is written."""

PICKLED = tuple(p.removeprefix("*") for p in PICKLE_PATTERNS)  # (".bin", ..., ".th", ...)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SEED_LIMIT = 2**63
MAX_THREADS = 512
TORCH_LOCK = threading.RLock()
"""Held by every engine load and generation: torch's RNG and thread count are process-global."""


@dataclass(frozen=True)
class Runtime:
    """Where and how an engine runs; recorded in the manifest and part of the artifact id."""

    device: str | None = None  # None/"auto": cuda, then mps, then cpu
    dtype: str | None = None  # None: float32
    threads: int | None = None  # None: torch's current setting
    precision: str = "exact"  # an engine's precision mode (MusicGen: exact, bf16, int8)
    # fast paths fixed for the run, (name, path): chosen by calibration.py or replayed from a manifest
    paths: tuple[tuple[str, str], ...] = ()

    def resolved(self) -> Runtime:
        """The same settings with every choice made (device, dtype, threads), checked.

        torch's thread count is process-global and pinned while a generation runs, so the
        default is read under :data:`TORCH_LOCK` (never another generation's pinned value).
        """
        chosen = pick_device(self.device)
        with TORCH_LOCK:
            threads = pick_threads(self.threads)
        return Runtime(str(chosen), pick_dtype(self.dtype, chosen), threads, self.precision, self.paths)


class Engine(Protocol):
    """What every engine offers (see the module docstring for the contract)."""

    name: ClassVar[str]
    kind: ClassVar[str]
    code_version: ClassVar[int]
    packages: ClassVar[tuple[str, ...]]
    request_type: ClassVar[type]
    precisions: ClassVar[tuple[str, ...]]
    loaded: LoadedModel

    @classmethod
    def check_runtime(cls, runtime: Runtime) -> None: ...

    @classmethod
    def check(cls, request: Any, snapshot: Path) -> Any: ...

    @classmethod
    def check_resources(cls, request: Any, snapshot: Path) -> None: ...

    @classmethod
    def fast_paths(
        cls, wb: Workbench, snapshot: Path, runtime: Runtime
    ) -> tuple[tuple[str, str], ...] | None: ...

    @classmethod
    def load(cls, wb: Workbench, name: str, runtime: Runtime) -> Engine: ...

    def generate(
        self, request: Any, progress: Progress | None = None, cancel: Cancel | None = None
    ) -> Any: ...

    def describe(self) -> dict: ...


class Steps:
    """Counts an engine's steps: reports ``progress(done, total)`` and stops when cancelled.

    Engines call ``steps()`` after every step; a set cancel raises
    :class:`~harmonia.errors.Cancelled` there (the generation stops, nothing is written).
    """

    def __init__(self, total: int, progress: Progress | None = None, cancel: Cancel | None = None):
        self.total, self.done = total, 0
        self.progress, self.cancel = progress, cancel

    def cancelled(self) -> bool:
        if self.cancel is None:
            return False
        return self.cancel.is_set() if isinstance(self.cancel, threading.Event) else bool(self.cancel())

    def __call__(self) -> None:
        if self.cancelled():
            raise Cancelled(
                f"Generation cancelled at step {self.done} of {self.total}; no artifact was written."
            )
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


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
    precision: str = "exact"  # the precision mode (see engines/musicgen.py)
    choices: dict[str, str] = field(default_factory=dict)  # fast paths chosen by calibration.py, and why

    @property
    def runtime(self) -> Runtime:
        return Runtime(self.device, self.dtype, self.threads, self.precision, self.paths)

    @property
    def paths(self) -> tuple[tuple[str, str], ...]:
        """The fast paths this engine runs, (name, path), as its choices record them."""
        return tuple(sorted((name, line.split()[0]) for name, line in self.choices.items()))


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
    except (RuntimeError, TypeError):
        raise RequestError(f"device must be auto, cpu, cuda, cuda:N or mps, got {device!r}.") from None
    if chosen.type not in ("cpu", "cuda", "mps"):  # meta, xla, ...: no real samples come out
        raise RequestError(f"device must be auto, cpu, cuda, cuda:N or mps, got {device!r}.")
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
    cores = os.cpu_count() or 1
    if isinstance(threads, int) and not isinstance(threads, bool) and cores < threads <= MAX_THREADS:
        warnings.warn(
            f"threads={threads} is more than this machine's {cores} cores: generation will be slower, "
            f"not faster. The setting is kept (it is recorded and changes the bits); use --threads {cores}.",
            stacklevel=2,
        )
    if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= MAX_THREADS:
        raise RequestError(f"threads must be an integer in [1, {MAX_THREADS}], got {threads!r}.")
    return threads


@dataclass(frozen=True)
class RemoteInventory(Inventory):
    """What stands for an inventory when a model is served by an endpoint: there are no files.

    Its digest names the server's base URL and the model asked for, so an artifact's id
    says which server and model answered (never the key). It cannot say which weights the
    server runs: a remote answer is cached by id but is not reproducible by construction.
    """

    @property
    def digest(self) -> str:
        canon = json.dumps({"endpoint": self.source.endpoint, "served_model": self.source.repo})
        return hashlib.sha256(canon.encode()).hexdigest()


def remote_inventory(spec: SnapshotSpec) -> RemoteInventory:
    """The stand-in inventory of an endpoint model (source type "endpoint": repo = served model)."""
    source = Source(type="endpoint", repo=spec.served_model, endpoint=spec.endpoint)
    return RemoteInventory(spec.name, "model", source, spec.license, files=(), created="")


def open_snapshot(
    wb: Workbench, name: str, engine: str, allow_pickle: bool = False
) -> tuple[SnapshotSpec, Path | None, Inventory]:
    """A declared model snapshot, present and verified, for ``engine``; clear errors otherwise.

    A model served by an endpoint (params.yaml ``endpoint:``) has no snapshot: its path is
    None and its inventory a :class:`RemoteInventory` (nothing to verify, no weights here).
    """
    spec = wb.spec("model", name)
    if spec.engine is not None and spec.engine != engine:
        raise RequestError(
            f"Model '{name}' is for the {spec.engine} engine, not {engine}. Pick a {engine} model."
        )
    if spec.remote:
        return spec, None, remote_inventory(spec)
    path = require_snapshot(wb, "model", name)
    inventory = require_loadable(wb, "model", name)  # verified, and no remote code named
    pickled = [f.path for f in inventory.files if f.path.endswith(PICKLED)]
    if pickled and not (allow_pickle or spec.allow_pickle):  # params.yaml's allow_pickle: true says it
        raise VerificationError(
            f"Model '{name}' contains pickled weights ({', '.join(pickled[:3])}); Harmonia loads safetensors "
            "only. Fetch it without --allow-pickle, or pass allow_pickle=True (or set 'allow_pickle: true' in "
            "its params.yaml entry) if you trust the files."
        )
    return spec, path, inventory


def available_memory_bytes() -> int | None:
    """Memory the kernel says a new allocation can get (MemAvailable), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(needed_bytes: int, what: str, fits: str) -> None:
    """Refuse a request whose estimated peak memory exceeds what is available (before any model loads)."""
    free = available_memory_bytes()
    if free is not None and needed_bytes > free:
        raise RequestError(
            f"{what} needs about {needed_bytes / 2**30:.1f} GiB of memory but {free / 2**30:.1f} GiB are "
            f"available; {fits}"
        )


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


_TOKENIZERS: dict[tuple[str, int], Any] = {}
TOKENIZER_LOCK = threading.Lock()
"""Held while a shared fast tokenizer is used outside a generation (they are not thread-safe)."""


def snapshot_tokenizer(snapshot: Path) -> Any:
    """The snapshot's tokenizer, loaded once per snapshot folder and config version (for checks)."""
    from transformers import AutoTokenizer

    key = (str(snapshot), (snapshot / "config.json").stat().st_mtime_ns)
    if key not in _TOKENIZERS:
        with quiet_transformers():
            _TOKENIZERS[key] = AutoTokenizer.from_pretrained(snapshot, local_files_only=True)
    return _TOKENIZERS[key]
