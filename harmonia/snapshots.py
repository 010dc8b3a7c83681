"""Local snapshots: verify them against their inventories, list them, install them atomically.

A snapshot is ``models/NAME/`` (or ``datasets/NAME/``): the files plus ``inventory.json``.
Verification compares the folder with the inventory and names every modified, truncated,
missing and extra file. The default (fast) mode re-hashes only files whose size, mtime or
inode changed since they were last hashed; those facts live in a small state file under
``.harmonia/verify/`` at the workbench root, outside the snapshot, so DVC never sees it.

This module knows folders, inventories and hashes (atomic installs live in atomic.py); it does not know the hub (see hub.py)
or how tiny models are built (see tiny.py).
"""

from __future__ import annotations

import json
import os
import stat
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harmonia.atomic import discard, install
from harmonia.atomic import staging_dir as _staging_dir
from harmonia.errors import InventoryError, SnapshotMissingError, VerificationError
from harmonia.hashing import hash_files
from harmonia.inventory import (
    INVENTORY_FILE,
    FileEntry,
    Inventory,
    Source,
    read_inventory,
    utc_now,
    write_inventory,
)
from harmonia.workbench import Kind, SnapshotSpec, Workbench, plural

STATE_SCHEMA = "harmonia.verify-state/1"
PROBLEM_KINDS = ("modified", "truncated", "missing", "extra")


@dataclass(frozen=True)
class Problem:
    """One way a snapshot differs from its inventory."""

    path: str
    kind: str  # one of PROBLEM_KINDS
    detail: str


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of verifying one snapshot."""

    # what was checked, and how
    name: str
    kind: Kind
    mode: str  # "fast" or "full"
    files: int
    # the work done
    hashed: int
    skipped: int
    bytes_hashed: int
    seconds: float
    # the verdict
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        data["problems"] = [asdict(p) for p in self.problems]
        return data

    def summary(self) -> str:
        """One line: 'ok' or the problems counted by kind, with up to three paths each."""
        if self.ok:
            return (
                f"{self.kind} {self.name}: ok ({self.files} files, {self.hashed} hashed, "
                f"{self.skipped} unchanged, {self.mode})"
            )
        parts = []
        for kind in PROBLEM_KINDS:
            paths = [p.path for p in self.problems if p.kind == kind]
            if paths:
                shown = ", ".join(paths[:3]) + (f", +{len(paths) - 3} more" if len(paths) > 3 else "")
                parts.append(f"{len(paths)} {kind} ({shown})")
        return f"{self.kind} {self.name}: FAILED: " + "; ".join(parts)


@dataclass(frozen=True)
class SnapshotStatus:
    """What `harmonia models list` shows for one snapshot."""

    name: str
    kind: Kind
    declared: bool
    present: bool
    source: str  # "hf:owner/name", "synthetic:musicgen", or "-"
    revision: str | None  # the resolved commit (hub) or "seed=N" (synthetic)
    size: int | None
    license: str | None
    verified: str  # "ok", "failed", "never", "invalid", "missing"
    verified_at: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def require_snapshot(wb: Workbench, kind: Kind, name: str) -> Path:
    """The snapshot folder of ``name``; a clear error saying how to get it if it is absent."""
    folder = wb.snapshot_dir(kind, name)
    if not (folder / INVENTORY_FILE).is_file():
        raise SnapshotMissingError(
            f"{kind.capitalize()} '{name}' has no snapshot in {folder}. Run: "
            + how_to_get(wb.specs(kind).get(name), kind, name)
        )
    return folder


def how_to_get(spec: SnapshotSpec | None, kind: Kind, name: str) -> str:
    if spec is not None and spec.synthetic:
        seed = f" --seed {spec.seed}" if spec.seed is not None else ""
        verb = "tiny" if kind == "model" else "build"
        return f"harmonia {plural(kind)} {verb} {spec.builder} --name {name}{seed}"
    return f"harmonia {plural(kind)} fetch {name}"


def scan_tree(root: Path) -> dict[str, os.stat_result]:
    """Every file under ``root`` (POSIX relative path -> stat), inventory.json excepted.

    Symlinks are followed only when they stay inside ``root``; one that leaves it is an
    :class:`InventoryError`, since a snapshot must hold its own bytes.
    """
    root_real = os.path.realpath(root)
    found: dict[str, os.stat_result] = {}
    stack = [("", str(root))]
    while stack:
        prefix, folder = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                rel = f"{prefix}{entry.name}"
                if entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    if os.path.commonpath([root_real, target]) != root_real:
                        raise InventoryError(
                            f"{root}: {rel} is a symlink to {target}, outside the snapshot. "
                            "A snapshot must hold its own files: replace the link with the file "
                            "or fetch the snapshot again."
                        )
                    found[rel] = os.stat(entry.path)  # a linked folder is not followed: extra
                elif entry.is_dir(follow_symlinks=False):
                    stack.append((f"{rel}/", entry.path))
                elif rel != INVENTORY_FILE:
                    found[rel] = entry.stat(follow_symlinks=False)
    return found


class _State:
    """The verify state of one snapshot: stat facts of files at their last hash, last verdict."""

    def __init__(self, wb: Workbench, kind: Kind, name: str):
        self.path = wb.state_dir / "verify" / plural(kind) / f"{name}.json"

    def load(self, inventory_digest: str | None = None) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"files": {}, "last": None}
        if data.get("schema") != STATE_SCHEMA or not isinstance(data.get("files"), dict):
            return {"files": {}, "last": None}
        if inventory_digest is not None and data.get("inventory_digest") != inventory_digest:
            data["files"] = {}
        return data

    def save(self, inventory_digest: str, files: dict[str, list], last: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        data = {
            "schema": STATE_SCHEMA,
            "inventory_digest": inventory_digest,
            "files": files,
            "last": last,
        }
        tmp.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
        os.replace(tmp, self.path)


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def verify(
    wb: Workbench,
    kind: Kind,
    name: str,
    full: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Check a snapshot's files against its inventory.

    Args:
        wb: the workbench.
        kind: "model" or "dataset".
        name: the snapshot's name.
        full: re-hash every file; by default only files whose size, mtime or inode changed
            since their last hash are re-hashed.
        progress: called as ``progress(bytes_just_hashed, bytes_to_hash)`` from worker threads.

    Returns:
        A :class:`VerifyReport`; ``report.ok`` is False when any file is modified,
        truncated, missing or extra.

    Example:
        >>> report = verify(Workbench.open(), "model", "tiny-musicgen")  # doctest: +SKIP
        >>> report.summary()  # doctest: +SKIP
        'model tiny-musicgen: ok (9 files, 0 hashed, 9 unchanged, fast)'
    """
    started = time.perf_counter()
    # 1. Read the inventory and what is on disk.
    folder = require_snapshot(wb, kind, name)
    inventory = read_inventory(folder)
    on_disk = scan_tree(folder)
    state = _State(wb, kind, name)
    known = {} if full else state.load(inventory.digest)["files"]

    # 2. Sort each inventory file into missing, wrong size, unchanged since its last hash, or to hash.
    problems: list[Problem] = []
    to_hash: dict[str, tuple[str, os.stat_result]] = {}
    new_state: dict[str, list] = {}
    skipped = 0
    for entry in inventory.files:
        st = on_disk.pop(entry.path, None)
        if st is None:
            problems.append(Problem(entry.path, "missing", "listed in the inventory, not on disk"))
        elif not stat.S_ISREG(st.st_mode):
            problems.append(Problem(entry.path, "modified", "is not a regular file"))
        elif st.st_size < entry.size:
            problems.append(Problem(entry.path, "truncated", f"{st.st_size} of {entry.size} bytes"))
        elif st.st_size > entry.size:
            problems.append(Problem(entry.path, "modified", f"{st.st_size} bytes, expected {entry.size}"))
        else:
            key = _stat_key(st)
            seen = known.get(entry.path)
            if seen is not None and seen[:3] == key and seen[3] == entry.sha256:
                new_state[entry.path] = seen
                skipped += 1
            else:
                to_hash[str(folder / entry.path)] = (entry.path, st)

    # 3. Hash what changed (in parallel) and compare.
    total = sum(st.st_size for _, st in to_hash.values())
    digests = hash_files(to_hash, progress=None if progress is None else lambda n: progress(n, total))
    expected = inventory.by_path()
    for full_path, sha in digests.items():
        rel, st = to_hash[full_path]
        new_state[rel] = [*_stat_key(st), sha]
        if sha != expected[rel].sha256:
            want = expected[rel].sha256
            problems.append(Problem(rel, "modified", f"sha256 {sha[:12]}…, expected {want[:12]}…"))

    # 4. Whatever is left on disk is not in the inventory.
    problems.extend(Problem(rel, "extra", "on disk, not in the inventory") for rel in sorted(on_disk))

    # 5. Record what was hashed and the verdict.
    report = VerifyReport(
        name=name,
        kind=kind,
        mode="full" if full else "fast",
        files=len(inventory.files),
        hashed=len(digests),
        skipped=skipped,
        bytes_hashed=sum(to_hash[f][1].st_size for f in digests),
        seconds=time.perf_counter() - started,
        problems=tuple(sorted(problems, key=lambda p: (PROBLEM_KINDS.index(p.kind), p.path))),
    )
    last = {"ok": report.ok, "mode": report.mode, "at": utc_now(), "problems": len(problems)}
    state.save(inventory.digest, new_state, last)
    return report


def require_verified(wb: Workbench, kind: Kind, name: str) -> Inventory:
    """Verify (fast mode) and return the inventory; :class:`VerificationError` if anything is off."""
    report = verify(wb, kind, name)
    if not report.ok:
        raise VerificationError(
            f"{kind.capitalize()} '{name}' failed verification: {report.summary().split(': ', 2)[2]}. "
            f"Run 'harmonia {plural(kind)} verify {name}' for details, then "
            f"'{how_to_get(wb.specs(kind).get(name), kind, name)}' to restore it."
        )
    return read_inventory(wb.snapshot_dir(kind, name))


def record_hashed(wb: Workbench, kind: Kind, name: str, inventory: Inventory) -> None:
    """Note that every file of a just-installed snapshot was hashed (so a fast verify skips them)."""
    folder = wb.snapshot_dir(kind, name)
    files = {}
    for entry in inventory.files:
        st = os.stat(folder / entry.path)
        files[entry.path] = [*_stat_key(st), entry.sha256]
    last = {"ok": True, "mode": "full", "at": utc_now(), "problems": 0}
    _State(wb, kind, name).save(inventory.digest, files, last)


def list_snapshots(wb: Workbench, kind: Kind) -> list[SnapshotStatus]:
    """Every declared snapshot of this kind, and every undeclared folder that holds one."""
    specs = wb.specs(kind)
    names = set(specs)
    kind_dir = wb.kind_dir(kind)
    if kind_dir.is_dir():
        names |= {
            p.name
            for p in kind_dir.iterdir()
            if (p / INVENTORY_FILE).is_file() and not p.name.startswith(".")
        }
    rows = []
    for name in sorted(names):
        spec = specs.get(name)
        folder = wb.snapshot_dir(kind, name)
        last = _State(wb, kind, name).load()["last"] or {}
        source = f"hf:{spec.repo}" if spec and spec.repo else (f"synthetic:{spec.builder}" if spec else "-")
        row = dict(
            name=name,
            kind=kind,
            declared=spec is not None,
            present=False,
            source=source,
            revision=None,
            size=None,
            license=spec.license if spec else None,
            verified="missing",
            verified_at=None,
        )
        if (folder / INVENTORY_FILE).is_file():
            row["present"] = True
            try:
                inv = read_inventory(folder)
            except InventoryError:
                row["verified"] = "invalid"
            else:
                src = inv.source
                row["source"] = f"hf:{src.repo}" if src.type == "huggingface" else f"synthetic:{src.builder}"
                row["revision"] = src.revision if src.type == "huggingface" else f"seed={src.seed}"
                row["size"] = inv.total_size
                row["license"] = inv.license
                row["verified"] = ("ok" if last["ok"] else "failed") if last else "never"
                row["verified_at"] = last.get("at")
        rows.append(SnapshotStatus(**row))
    return rows


def staging_dir(wb: Workbench, kind: Kind, name: str) -> Path:
    """A fresh hidden staging folder beside ``models/NAME`` (see harmonia.atomic)."""
    return _staging_dir(wb.kind_dir(kind), name)


def install_built(
    wb: Workbench, kind: Kind, name: str, build: Callable[[Path], None], source: Source, license: str | None
) -> Inventory:
    """Build a snapshot in code and install it: ``build(folder)`` writes the files; this hashes them,
    writes the inventory and renames the folder into place (all or nothing).
    """
    staging = staging_dir(wb, kind, name)
    try:
        build(staging)
        files = sorted(scan_tree(staging))
        digests = hash_files(staging / f for f in files)
        entries = tuple(FileEntry(f, (staging / f).stat().st_size, digests[str(staging / f)]) for f in files)
        inventory = Inventory(name=name, kind=kind, source=source, license=license, files=entries)
        write_inventory(staging, inventory)
        install(staging, wb.snapshot_dir(kind, name))
    finally:
        discard(staging)
    record_hashed(wb, kind, name, inventory)
    return inventory
