"""Local snapshots: verify them against their inventories, list them, install them atomically.

A snapshot is ``models/NAME/`` (or ``datasets/NAME/``): the files plus ``inventory.json``.
Verification compares the folder with the inventory and names every modified, truncated,
missing and extra file. The default (fast) mode re-hashes only files whose device, inode,
size, mtime or ctime changed since they were last hashed; those facts live in a small state
file under ``.harmonia/verify/`` at the workbench root, outside the snapshot, so DVC never
sees it. The ctime is what makes the fast mode sound: ``os.utime`` can put a file's mtime
back after its bytes were overwritten, but nothing short of root changing the system clock
(or writing the disk device) can set a ctime, and any write, chmod or rename moves it on.

Loading trusts no record from outside the process: ``require_loadable`` (the "load" mode)
hashes every file again unless this same process hashed it since it last changed, so a root
user who resets the clock and restores a ctime still cannot make a tampered snapshot pass at
load; ``confirm_unchanged`` then checks, before an artifact is written, that no file changed
while the model was in use (transformers maps safetensors files shared: a write to one after
loading changes the model's weights in memory).

This module knows folders, inventories and hashes (atomic installs live in atomic.py); it does not know the hub (see hub.py)
or how tiny models are built (see tiny.py).
"""

from __future__ import annotations

import json
import os
import stat
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from harmonia.atomic import discard, install
from harmonia.atomic import staging_dir as _staging_dir
from harmonia.errors import InventoryError, RemoteCodeError, SnapshotMissingError, VerificationError
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
from harmonia.safeload import load_json
from harmonia.workbench import Kind, SnapshotSpec, Workbench, plural

STATE_SCHEMA = "harmonia.verify-state/2"  # /1 lacked ctime and device: such files are hashed again
PROBLEM_KINDS = ("modified", "truncated", "missing", "extra")
MODES = ("fast", "full", "load")

# Files this process has hashed itself: absolute path -> [size, mtime_ns, ctime_ns, inode, device,
# sha256], the stat facts taken before the bytes were read. Never written to disk: a fresh
# process hashes every file again at its first load.
_HASHED_HERE: dict[str, list] = {}


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
    mode: str  # "fast", "full" or "load" (see MODES)
    files: int
    # the work done
    hashed: int
    skipped: int
    bytes_hashed: int
    seconds: float
    # the verdict
    problems: tuple[Problem, ...]
    # which bytes were checked: the inventory's digest (the pipeline re-runs when it changes)
    inventory_digest: str = ""

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


def require_present(wb: Workbench, targets: Iterable[tuple[Kind, str]]) -> None:
    """Every snapshot in ``targets`` is here; else one :class:`SnapshotMissingError` naming all that are not.

    The message gives the commands that make them, in order, so one run of them is enough.

    Example:
        >>> require_present(Workbench.open(), [("model", "musicgen-small")])  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        harmonia.errors.SnapshotMissingError: Not here yet: model musicgen-small. Run: harmonia models fetch musicgen-small (or 'dvc pull' if your DVC remote holds it).
    """
    missing = list(
        dict.fromkeys((k, n) for k, n in targets if not (wb.snapshot_dir(k, n) / INVENTORY_FILE).is_file())
    )
    if not missing:
        return
    names = ", ".join(f"{kind} {name}" for kind, name in missing)
    commands = " && ".join(how_to_get(wb.specs(kind).get(name), kind, name) for kind, name in missing)
    them = "them" if len(missing) > 1 else "it"
    raise SnapshotMissingError(
        f"Not here yet: {names}. Run: {commands} (or 'dvc pull' if your DVC remote holds {them})."
    )


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
    """What must be unchanged for a file to skip re-hashing: [size, mtime_ns, ctime_ns, inode, device]."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def verify(
    wb: Workbench,
    kind: Kind,
    name: str,
    full: bool = False,
    progress: Callable[[int, int], None] | None = None,
    mode: str | None = None,
) -> VerifyReport:
    """Check a snapshot's files against its inventory.

    Args:
        wb: the workbench.
        kind: "model" or "dataset".
        name: the snapshot's name.
        full: re-hash every file (the same as ``mode="full"``).
        progress: called as ``progress(bytes_just_hashed, bytes_to_hash)`` from worker threads.
        mode: which earlier hashes to trust. "fast" (the default): a file is re-hashed only when
            its size, mtime, ctime, inode or device changed since its last hash by any process
            (the state file). "full": none, every file is re-hashed. "load": only this process's
            own hashes, so a fresh process re-hashes every file.

    Returns:
        A :class:`VerifyReport`; ``report.ok`` is False when any file is modified,
        truncated, missing or extra.

    Example:
        >>> report = verify(Workbench.open(), "model", "tiny-musicgen")  # doctest: +SKIP
        >>> report.summary()  # doctest: +SKIP
        'model tiny-musicgen: ok (9 files, 0 hashed, 9 unchanged, fast)'
    """
    return _verify(wb, kind, name, full, progress, mode)[0]


def _verify(
    wb: Workbench, kind: Kind, name: str, full: bool, progress, mode: str | None
) -> tuple[VerifyReport, Inventory]:
    """:func:`verify`, and the inventory it checked with the stat facts of this verification (``seen``)."""
    started = time.perf_counter()
    mode = mode or ("full" if full else "fast")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}.")
    # 1. Read the inventory and what is on disk.
    folder = require_snapshot(wb, kind, name)
    inventory = read_inventory(folder)
    on_disk = scan_tree(folder)
    state = _State(wb, kind, name)
    if mode == "fast":
        known = state.load(inventory.digest)["files"]
    elif mode == "load":
        known = {
            e.path: _HASHED_HERE[str(folder / e.path)]
            for e in inventory.files
            if str(folder / e.path) in _HASHED_HERE
        }
    else:
        known = {}

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
            if isinstance(seen, list) and seen[:-1] == key and seen[-1] == entry.sha256:
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
        new_state[rel] = _HASHED_HERE[full_path] = [*_stat_key(st), sha]  # stat taken before the read
        if sha != expected[rel].sha256:
            want = expected[rel].sha256
            problems.append(Problem(rel, "modified", f"sha256 {sha[:12]}…, expected {want[:12]}…"))

    # 4. Whatever is left on disk is not in the inventory.
    problems.extend(Problem(rel, "extra", "on disk, not in the inventory") for rel in sorted(on_disk))

    # 5. Record what was hashed and the verdict.
    report = VerifyReport(
        name=name,
        kind=kind,
        mode=mode,
        files=len(inventory.files),
        hashed=len(digests),
        skipped=skipped,
        bytes_hashed=sum(to_hash[f][1].st_size for f in digests),
        seconds=time.perf_counter() - started,
        problems=tuple(sorted(problems, key=lambda p: (PROBLEM_KINDS.index(p.kind), p.path))),
        inventory_digest=inventory.digest,
    )
    last = {"ok": report.ok, "mode": report.mode, "at": utc_now(), "problems": len(problems)}
    state.save(inventory.digest, new_state, last)
    seen = tuple(sorted((rel, tuple(facts)) for rel, facts in new_state.items()))
    return report, replace(inventory, seen=seen)


def require_verified(
    wb: Workbench, kind: Kind, name: str, full: bool = False, mode: str | None = None
) -> Inventory:
    """Verify (fast mode unless ``full`` or ``mode`` says otherwise) and return the inventory;
    :class:`VerificationError` if anything is off.
    """
    report, inventory = _verify(wb, kind, name, full, None, mode)
    if not report.ok:
        # what a fast verify may have trusted, this one hashed: the user's check must hash too
        flag = "" if report.mode == "fast" else "--full "
        raise VerificationError(
            f"{kind.capitalize()} '{name}' failed verification: {report.summary().split(': ', 2)[2]}. "
            f"Run 'harmonia {plural(kind)} verify {flag}{name}' for details, then "
            f"'{how_to_get(wb.specs(kind).get(name), kind, name)}' to restore it."
        )
    return inventory  # with the stat facts this verification took (``inventory.seen``)


def require_loadable(wb: Workbench, kind: Kind, name: str, full: bool = False) -> Inventory:
    """What an engine calls before it loads a snapshot: its bytes are the inventory's, and no config asks for remote code.

    Every file is hashed (sha256) unless this process itself hashed it since it last changed
    (its size, mtime, ctime, inode and device are those taken before that hash): the verify
    state on disk, which a fast verify trusts, is not trusted here, so a snapshot tampered at
    rest is caught at load even when its ctime was restored by resetting the clock. The hash
    reads the file into the page cache, where the library's own read finds it next. Measured on
    a 2-core AMD EPYC: sha256 takes 0.60-0.65 s of one core per GiB (separate files are hashed
    in parallel, one thread per core), so a 1.6 GB snapshot added 2.5-2.6 s to a process's first
    load on a core shared with other work (about 1 s of CPU); a later load in the same process
    costs one ``stat`` per file (4 ms for 3 files).

    Then every JSON config (each ``*.json`` at the snapshot root, and each ``*config.json``
    below it) is searched for an ``auto_map`` key at any depth: such a key makes
    transformers import Python code shipped with the model. Harmonia never runs it, even
    when the inventory matches.

    Args:
        wb: the workbench.
        kind: "model" or "dataset".
        name: the snapshot's name.
        full: re-hash every file, even those this process hashed already.

    Returns:
        The snapshot's :class:`Inventory`.

    Raises:
        SnapshotMissingError: there is no snapshot.
        VerificationError: a file differs from the inventory.
        RemoteCodeError: a config names remote code.

    Example:
        >>> inventory = require_loadable(Workbench.open(), "model", "tiny-musicgen")  # doctest: +SKIP
    """
    inventory = require_verified(wb, kind, name, mode="full" if full else "load")
    refuse_remote_code(wb.snapshot_dir(kind, name), inventory, f"{kind.capitalize()} '{name}'")
    return inventory


def confirm_unchanged(wb: Workbench, kind: Kind, name: str, inventory: Inventory) -> None:
    """A :class:`VerificationError` unless every file is as it was when ``inventory`` was verified.

    Called after a generation, before its artifact is written: transformers maps safetensors
    files shared, so a write to a weights file while the model is loaded changes the weights
    in memory. Any such write moves the file's ctime (one ``stat`` per file). The stat facts
    compared are those of the verification that returned ``inventory`` (``inventory.seen``, set
    by :func:`require_loadable`), never the process-wide record: another thread's load that
    re-hashed a file written and then restored mid-generation refreshes that record, not this
    copy. An inventory without them (not from a verification) counts as changed.
    """
    folder = wb.snapshot_dir(kind, name)
    verified = dict(inventory.seen)
    changed = []
    for entry in inventory.files:
        seen = verified.get(entry.path)
        try:
            now = _stat_key(os.stat(folder / entry.path))
        except OSError:
            now = None
        if seen is None or now is None or list(seen[:-1]) != now or seen[-1] != entry.sha256:
            changed.append(entry.path)
    if changed:
        shown = ", ".join(changed[:3]) + (f", +{len(changed) - 3} more" if len(changed) > 3 else "")
        raise VerificationError(
            f"{kind.capitalize()} '{name}' changed on disk while it was in use ({shown}); nothing was written. "
            f"Run 'harmonia {plural(kind)} verify --full {name}', then generate again."
        )


def refuse_remote_code(folder: Path, inventory: Inventory, label: str) -> None:
    """A :class:`RemoteCodeError` if a config of the snapshot in ``folder`` has an ``auto_map`` key."""
    for entry in inventory.files:
        if not entry.path.endswith(".json") or ("/" in entry.path and not entry.path.endswith("config.json")):
            continue
        path = folder / entry.path
        raw = path.read_bytes()
        if b"auto_map" not in raw and b"\\u" not in raw:  # a key spelled with \u escapes is still read
            continue
        data = load_json(
            raw,
            str(path),
            max_bytes=max(len(raw), 1),
            error=VerificationError,
            fix="The snapshot's own file is malformed, so it cannot be checked for remote code.",
        )
        where = _find_key(data, "auto_map")
        if where is not None:
            raise RemoteCodeError(
                f"{label} cannot be loaded: {entry.path} has the key '{where}', which asks to run Python "
                "code from the model's repo. Harmonia never runs remote code: pick a model whose "
                "architecture transformers or diffusers ship."
            )


def _find_key(data: Any, key: str) -> str | None:
    """The dotted path of the first ``key`` in nested JSON data, or None."""
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        value, prefix = stack.pop()
        if isinstance(value, dict):
            if key in value:
                return f"{prefix}{key}"
            stack.extend((child, f"{prefix}{k}.") for k, child in value.items())
        elif isinstance(value, list):
            stack.extend((child, f"{prefix}{i}.") for i, child in enumerate(value))
    return None


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
        if spec is not None and spec.remote:  # served by an endpoint: there is no snapshot to have
            source = f"endpoint:{spec.endpoint}"
        row = dict(
            name=name,
            kind=kind,
            declared=spec is not None,
            present=False,
            source=source,
            revision=None,
            size=None,
            license=spec.license if spec else None,
            verified="remote" if spec is not None and spec.remote else "missing",
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
