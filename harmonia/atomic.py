"""All-or-nothing folders: build in a hidden staging folder beside the target, then swap it in.

Snapshots and artifacts are both written this way, so a crash or a kill leaves either the
old folder or the new one; never a half that looks whole. Hidden helper folders sit beside
the target and every listing skips hidden names:

- ``.NAME.partial-PID-START-RAND``: a staging folder being written. Its owner holds an
  ``flock`` on the folder for its whole life and its name carries the owner's pid and the
  process's start time (``/proc/PID/stat``), so a folder is *stale* only when that process
  is gone (no process with that pid and start time) *and* nobody holds its lock. Only stale
  folders are removed, by the next writer in the same folder; a live writer's folder is never
  touched, whichever process or thread owns it.
- ``.NAME.old-PID-START-RAND``: the previous folder, renamed away during a replace on
  systems without ``renameat2`` (see :func:`install`); stale once its owner is gone.

Replacing uses Linux's ``renameat2(RENAME_EXCHANGE)``: staging and target swap in one step,
so a reader never finds the target missing (a reader inside the old folder at the instant of
the swap may see its files vanish while the old contents are removed). Concurrent installs of
one name all succeed and the **last one wins**: each swaps its folder in and removes what it
swapped out, leaving exactly one complete folder and no hidden leftovers.

This module knows folders, renames and locks; nothing about what the folders hold.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import shutil
import threading
import uuid
from pathlib import Path

# renameat2(2) flags and the "relative to the working directory" descriptor, from <fcntl.h>/<stdio.h>.
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

_LOCKS: dict[str, int] = {}  # staging folder -> the open descriptor that holds its flock
_LOCKS_GUARD = threading.Lock()


def _load_renameat2():
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not glibc >= 2.28 (e.g. macOS, musl before 1.2.?)
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _load_renameat2()
_EXCHANGE_WORKS = _RENAMEAT2 is not None  # set to False the first time the filesystem refuses it


def staging_dir(parent: Path, name: str) -> Path:
    """A fresh hidden folder ``parent/.NAME.partial-PID-START-RAND`` (same filesystem as the target).

    This process holds an ``flock`` on it until :func:`install` or :func:`discard`. Stale
    helper folders in ``parent`` (their owner is dead), of any name, are removed first;
    folders of writers that are still alive are left alone.

    Example:
        >>> import tempfile
        >>> parent = Path(tempfile.mkdtemp())
        >>> staging = staging_dir(parent, "take")
        >>> (staging / "a.txt").write_text("a")
        1
        >>> install(staging, parent / "take")
        >>> sorted(p.name for p in parent.iterdir())
        ['take']
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    _close_forgotten_locks()
    remove_stale(parent)
    folder = parent / _owned_name(name, "partial")
    folder.mkdir()
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a brand-new folder: nobody else can hold it
    with _LOCKS_GUARD:
        _LOCKS[str(folder)] = fd
    return folder


def install(staging: Path, final: Path) -> None:
    """Put a complete staging folder in place of ``final``; an existing folder is replaced, never merged.

    With ``renameat2(RENAME_EXCHANGE)`` the two folders swap atomically and the old contents
    (now at the staging path) are removed, so ``final`` is never absent once it exists. If
    another process installs the same name at the same moment, both succeed and the last
    swap wins. Where renameat2 is unavailable (not Linux, old glibc, a filesystem that
    refuses the flag) the old folder is renamed away first, so ``final`` is briefly absent.
    """
    staging, final = Path(staging), Path(final)
    try:
        if not staging.is_dir():
            raise FileNotFoundError(errno.ENOENT, "staging folder does not exist", str(staging))
        if not (_EXCHANGE_WORKS and _install_by_exchange(staging, final)):
            _install_by_rename(staging, final)
    finally:
        _release(staging)


def discard(staging: Path) -> None:
    """Remove a staging folder that will not be installed (or what a swap left in it) and drop its lock."""
    _remove(Path(staging))
    _release(Path(staging))


def remove_stale(parent: Path, name: str | None = None) -> list[Path]:
    """Remove ``parent``'s helper folders (of ``name``, or of every name) whose owner is provably dead.

    Sweeping every name matters for artifacts: a killed generation leaves a staging folder
    under an id that may never be written again.

    Returns:
        The folders removed, sorted.
    """
    who = re.escape(name) if name is not None else ".+"
    helper = re.compile(rf"^\.{who}\.(partial|old)-(?:(\d+)-(\d+)-[0-9a-f]{{8}}|[0-9a-f]{{8}})$")
    removed = []
    with os.scandir(parent) as entries:
        candidates = sorted(
            (entry.name, helper.match(entry.name)) for entry in entries if entry.name[:1] == "."
        )
    for entry_name, match in candidates:
        if match is None:
            continue
        path = Path(parent) / entry_name
        role, pid, start = match.group(1), match.group(2), match.group(3)
        if pid is not None and _process_start(int(pid)) == int(start):
            continue  # its owner is running
        # A staging folder is also locked by its owner (or a child that inherited the descriptor);
        # folders named before owners were recorded (8 hex digits) have only the lock to go by.
        fd = _claim(path) if role == "partial" else None
        if role == "partial" and fd is None:
            continue
        try:
            _remove(path)
            removed.append(path)
        finally:
            if fd is not None:
                os.close(fd)
    return removed


def _install_by_exchange(staging: Path, final: Path) -> bool:
    """Swap staging into place; False if this filesystem or libc cannot (then nothing was changed)."""
    global _EXCHANGE_WORKS
    while True:
        try:
            _renameat2(staging, final, RENAME_EXCHANGE)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                _EXCHANGE_WORKS = False
                return False
            if exc.errno != errno.ENOENT:
                raise
        else:
            _remove(staging)  # the old folder, swapped out to the staging path
            return True
        # 'final' does not exist yet: move in without replacing; if another process got there
        # between the two calls, swap with its folder instead.
        try:
            _renameat2(staging, final, RENAME_NOREPLACE)
            return True
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                _EXCHANGE_WORKS = False
                return False
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise


def _install_by_rename(staging: Path, final: Path) -> None:
    """The portable replace: rename the old folder away, rename staging in, remove the old one.

    ``final`` is absent between the two renames. If another process installs in that gap,
    its folder is renamed away in turn and this one wins.
    """
    while True:
        old = None
        if os.path.lexists(final):
            old = final.with_name(_owned_name(final.name, "old"))
            try:
                os.rename(final, old)
            except FileNotFoundError:
                old = None  # another writer moved it away first
        try:
            os.rename(staging, final)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                if old is not None:
                    _remove(old)
                continue  # another writer moved in meanwhile: replace its folder
            if old is not None and not os.path.lexists(final):
                os.rename(old, final)
            raise
        if old is not None:
            _remove(old)
        return


def _renameat2(src: Path, dst: Path, flags: int) -> None:
    if _RENAMEAT2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available", str(src))
    if _RENAMEAT2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(src), None, str(dst))


def _owned_name(name: str, role: str) -> str:
    pid = os.getpid()
    return f".{name}.{role}-{pid}-{_process_start(pid)}-{uuid.uuid4().hex[:8]}"


def _process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), or None if there is none.

    The pair (pid, start) names one process: a pid reused later gets a different start. Without
    /proc (not Linux) a running pid reports 0.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[19])  # field 22, starttime; fields counted after the command name
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return None
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return 0


def _claim(path: Path) -> int | None:
    """An open descriptor holding ``path``'s flock, or None if another process holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _release(staging: Path) -> None:
    with _LOCKS_GUARD:
        fd = _LOCKS.pop(str(staging), None)
    if fd is not None:
        os.close(fd)


def _close_forgotten_locks() -> None:
    """Close the locks of staging folders a caller removed without :func:`discard`."""
    with _LOCKS_GUARD:
        gone = [path for path in _LOCKS if not os.path.lexists(path)]
        fds = [_LOCKS.pop(path) for path in gone]
    for fd in fds:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
