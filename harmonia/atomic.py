"""All-or-nothing folders: build in a hidden staging folder beside the target, then rename.

Snapshots and artifacts are both written this way, so a crash or a kill leaves either the
old folder, no folder, or the new one; never a half that looks whole. Staging folders are
hidden (``.NAME.partial-*``) and every listing skips hidden names.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def staging_dir(parent: Path, name: str) -> Path:
    """A fresh hidden folder ``parent/.NAME.partial-XXXXXXXX`` (same filesystem as the target).

    Leftovers of an earlier, killed attempt for the same name are removed first.
    """
    parent.mkdir(parents=True, exist_ok=True)
    for old in parent.glob(f".{name}.partial-*"):
        shutil.rmtree(old, ignore_errors=True)
    folder = parent / f".{name}.partial-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    return folder


def install(staging: Path, final: Path) -> None:
    """Move a complete staging folder into place; an existing folder is replaced, never merged.

    The old folder is renamed away first, so ``final`` is at every moment either the old
    folder, absent, or the new one.
    """
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    try:
        os.replace(staging, final)
    except BaseException:
        if old is not None:
            os.replace(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
