"""Harmonia's own CPU products for decoding, compiled on first use where the CPU and a compiler allow.

``decode.cpp`` holds the products for MusicGen's few-row decoding steps (batch 1 with
guidance: two rows against every weight of the decoder, read once from memory):

- ``torch.ops.harmonia.rows_linear``: float32 or bfloat16 weights as torch stores them
  (AVX-512F). In this torch CPU build a two-row ``F.linear`` reads float32 weights at 8-10
  GiB/s on one core of an AMD EPYC whose memory gives 34-39 GiB/s.
- ``torch.ops.harmonia.int8_linear``: int8 weights, one scale per channel, each row of the
  input quantised on the fly (exact integer sums: AVX-512 VNNI).
- ``torch.ops.harmonia.int4_linear``: 4-bit weights, one scale per group of 64 inputs of a
  channel, each row of the input quantised to int8 on the fly (AVX-512 VNNI); the ``int4``
  precision, whose torch stand-in computes the same bits where the kernel cannot run (slower
  than float32).
- ``torch.ops.harmonia.decode_attention``: a decoding step's attention (one position against a
  float32 or bfloat16 cache), in a fixed order on every AVX-512 CPU (AVX-512F); torch's SDPA
  reads the cache at 8-14 GiB/s on an Intel Xeon whose memory gives 19-21, this 15-17. Over an
  int8 cache (the ``own-int8`` path: codes and a scale per position, written by
  ``torch.ops.harmonia.store_int8`` and read back as float32 by ``torch.ops.harmonia.int8_values``)
  it rounds the query to int8 and takes the scores as integer dot products (AVX-512 VNNI).

Every product has a second form, for x86-64 CPUs without AVX-512 (or, for the integer products
and the int8 cache, without its VNNI) but with AVX2 and FMA (:data:`NARROW`), that computes the
same bits (the float kernels: every lane the same operations in the same order; the integer
ones: the same exact integer sums, by vpmaddubsw and vpmaddwd, then the same float steps), so an
artifact made with either replays on both; :func:`form` says which runs.

Whether rows_linear, int8_linear or decode_attention is used is decided by measurement on the machine at hand
(:mod:`harmonia.calibration`), never assumed; the engine records the choice.

The library is compiled by torch's extension builder (g++ and ninja) into the user's cache
(``$XDG_CACHE_HOME/harmonia/kernels``, else ``~/.cache/harmonia/kernels``; the
``HARMONIA_KERNEL_DIR`` variable overrides it), once per source, torch version and compiler
flags: about 10 s. Each function carries its own target attribute, so the library loads on any
x86-64 CPU; a product runs only where /proc/cpuinfo lists what it needs. Where it cannot
run, :func:`unavailable` says why in one line, and the engine keeps torch's own products.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("decode.cpp")
# -ffp-contract=off: no fused multiply-add where the source has none. -fopenmp: at::parallel_for
# runs on OpenMP, which the library shares with torch (the same libgomp.so.1, already loaded by
# torch, so torch.set_num_threads governs both).
FLAGS = ("-O3", "-ffp-contract=off", "-fopenmp")
NEEDS = {  # what each product needs of the CPU (/proc/cpuinfo flags)
    "rows_linear": ("avx512f", "avx512bw", "avx512vl"),
    "int8_linear": ("avx512f", "avx512bw", "avx512vl", "avx512_vnni"),
    "int4_linear": ("avx512f", "avx512bw", "avx512vl", "avx512_vnni"),
    "decode_attention": ("avx512f", "avx512bw", "avx512vl"),
}
# what each product's AVX2 form (the same bits) needs: every product has one (the CPU's flags pick the form)
NARROW = {product: ("avx2", "fma") for product in NEEDS}
_lock = threading.Lock()
_state: dict[str, str | None] = {}


def int8_cache(
    rows: int, heads: int, length: int, dim: int, keys: bool, device: torch.device | str | None = None
) -> torch.Tensor:
    """An empty int8 cache for ``length`` positions, as ``harmonia.store_int8`` writes it and
    ``harmonia.decode_attention`` reads it (decode.cpp): keys as uint8 in blocks of 16 positions
    (``[rows, heads, blocks, 16 x pad4(dim) + 64]``), values as int8 by position (``[rows, heads,
    length, pad4(dim) + 4]``): pad4(dim) + 4 bytes a position either way."""
    padded = (dim + 3) // 4 * 4
    if keys:
        return torch.empty(rows, heads, -(-length // 16), 16 * padded + 64, dtype=torch.uint8, device=device)
    return torch.empty(rows, heads, length, padded + 4, dtype=torch.int8, device=device)


def int8_stored(values: torch.Tensor, keys: bool) -> torch.Tensor:
    """``values`` [rows, heads, length, dim] (float32) in an int8 cache of their own, as the
    decoding loop keeps keys (``keys``) or values (needs the compiled library)."""
    cache = int8_cache(*values.shape, keys=keys, device=values.device)
    torch.ops.harmonia.store_int8(cache, values, 0)
    return cache


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (from /proc/cpuinfo, read once; empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def kernel_dir() -> Path:
    """Where compiled kernels are kept (per user, shared by every workbench)."""
    if os.environ.get("HARMONIA_KERNEL_DIR"):
        return Path(os.environ["HARMONIA_KERNEL_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "harmonia" / "kernels"


def form(product: str) -> str | None:
    """The form of ``product`` this CPU runs: "avx512", "avx2" (without AVX-512, or for the
    integer products without its VNNI: the same bits), or None (neither)."""
    flags = cpu_flags()
    if all(flag in flags for flag in NEEDS[product]):
        return "avx512"
    if product in NARROW and all(flag in flags for flag in NARROW[product]):
        return "avx2"
    return None


def unavailable(product: str) -> str | None:
    """None when ``torch.ops.harmonia.<product>`` can run here (compiled first if needed); else why not."""
    if form(product) is None:
        missing = ", ".join(flag for flag in NEEDS[product] if flag not in cpu_flags())
        if product in NARROW:
            narrow = ", ".join(flag for flag in NARROW[product] if flag not in cpu_flags())
            return f"this CPU lacks {missing} (and {narrow}, which its AVX2 form needs)"
        return f"this CPU lacks {missing}"
    return build()


@contextlib.contextmanager
def forced_form(name: str):
    """Run the products in form ``name`` ("avx512" or "avx2") inside the block (tests and
    benchmarks: the AVX2 form on an AVX-512 CPU; the integer products run it anyway without VNNI). The form is the process's: not for
    threads that compute meanwhile (their bits stay the same, their speed may not)."""
    why = build()
    if why is not None:
        raise RuntimeError(f"Harmonia's kernels are unavailable: {why}")
    before = torch.ops.harmonia.use_form(name)
    try:
        yield
    finally:
        torch.ops.harmonia.use_form(before)


def build() -> str | None:
    """Compile (once per machine) and load the library; None when loaded, else why not.

    The library runs on any x86-64 CPU (each product checks its own target), so an image can
    build it on a machine whose CPU would not use it. A failure is remembered for the life of
    the process: restart it after installing a compiler.
    """
    with _lock:
        if "library" not in _state:
            _state["library"] = _load()
            # the library picks its form from the CPU as it loads; where /proc/cpuinfo says this
            # CPU runs only the AVX2 form, that form, whatever the library found
            if _state["library"] is None and form("rows_linear") == "avx2":
                torch.ops.harmonia.use_form("avx2")
        return _state["library"]


def compiler() -> str:
    """The C++ compiler torch's builder uses (``$CXX``, else c++) and its version line."""
    import subprocess

    name = os.environ.get("CXX", "c++")
    try:
        out = subprocess.run([name, "--version"], capture_output=True, text=True, timeout=30).stdout
        return f"{name}: {out.splitlines()[0] if out else '?'}"
    except (OSError, subprocess.SubprocessError):
        return f"{name}: not found"


def library_name() -> str:
    """The library's file stem: a digest of the source, torch's version, the flags and the compiler."""
    tag = repr((torch.__version__, FLAGS, compiler())).encode()
    return f"harmonia_decode_{hashlib.sha256(SOURCE.read_bytes() + tag).hexdigest()[:16]}"


def _load() -> str | None:
    name = library_name()
    library = kernel_dir() / f"{name}.so"
    try:
        if library.is_file():  # built before (moved into place whole): no lock needed, read-only is fine
            torch.ops.load_library(str(library))
            return None
        library.parent.mkdir(parents=True, exist_ok=True)
        with open(kernel_dir() / f".{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # processes starting together build once, the others wait
            if library.is_file():
                torch.ops.load_library(str(library))
            else:
                _build(name, library)  # which loads it too
        return None
    except Exception as error:  # no compiler, no ninja, a failed build: torch's own products run
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        log.warning("Harmonia's decoding products are unavailable (%s); torch's own run instead", reason)
        return f"it could not be compiled ({reason})"


def _build(name: str, library: Path) -> None:
    """Compile (and load) in a private folder, then move the library into place whole (never half-written)."""
    from torch.utils.cpp_extension import load

    log.warning("compiling Harmonia's decoding products into %s (once, about 10 s)", library.parent)
    folder = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=library.parent))
    try:
        load(
            name=name,
            sources=[str(SOURCE)],
            extra_cflags=list(FLAGS),
            extra_ldflags=["-fopenmp"],
            build_directory=str(folder),
            is_python_module=False,
            verbose=False,
        )
        os.replace(folder / f"{name}.so", library)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
