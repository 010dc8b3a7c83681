"""File hashing: sha256 of many files in parallel, and git's blob id for small hub files.

``hashlib`` releases the GIL while it hashes a buffer, so a thread per core gives close to a
core's worth of sha256 each; files are handed out largest first so the last one to finish
is small. This module knows files and digests, nothing about snapshots.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CHUNK_BYTES = 1 << 20


def default_workers() -> int:
    """One hashing thread per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def sha256_file(path: str | os.PathLike[str], progress: Callable[[int], None] | None = None) -> str:
    """The hex sha256 of a file, read in 1 MiB pieces; ``progress(n)`` gets each piece's size."""
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
            if progress is not None:
                progress(n)
    return digest.hexdigest()


def git_blob_sha1(path: str | os.PathLike[str]) -> str:
    """The id git (and the hub, for non-LFS files) gives a file's bytes: sha1 of 'blob N\\0' + data."""
    data = Path(path).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def hash_files(
    paths: Iterable[str | os.PathLike[str]],
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, str]:
    """sha256 of each path, hashed in parallel, largest file first.

    Args:
        paths: files to hash.
        workers: threads (default: one per available core).
        progress: called with the number of bytes just hashed, from worker threads.

    Returns:
        ``{str(path): hex sha256}``.

    Example:
        >>> hash_files([])
        {}
    """
    ordered = sorted((str(p) for p in paths), key=lambda p: os.stat(p).st_size, reverse=True)
    if not ordered:
        return {}
    workers = min(workers or default_workers(), len(ordered))
    if workers == 1:
        return {p: sha256_file(p, progress) for p in ordered}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="harmonia-hash") as pool:
        digests = pool.map(lambda p: sha256_file(p, progress), ordered)
        return dict(zip(ordered, digests, strict=True))
