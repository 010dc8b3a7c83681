"""Tracking snapshots with DVC, and the git-tracked record that lets CI check them without data.

DVC moves ``models/`` and ``datasets/`` between machines (``models.dvc``, ``datasets.dvc``,
a remote). ``snapshots.lock`` is Harmonia's record of every present snapshot: its source
(the resolved 40-hex commit, or builder and seed), its inventory, and the file count and
bytes DVC will see. ``check`` compares params.yaml, the record and the .dvc files, reading
no snapshot data, so CI can run it on a clean clone.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from harmonia.errors import HarmoniaError, InventoryError
from harmonia.inventory import INVENTORY_FILE, parse_inventory, read_inventory
from harmonia.snapshots import list_snapshots
from harmonia.workbench import KINDS, Kind, Workbench, plural

RECORD_FILE = "snapshots.lock"
RECORD_SCHEMA = "harmonia.snapshots-lock/1"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class TrackingError(HarmoniaError, RuntimeError):
    """DVC could not record a change.

    Example message:
        'dvc add models' failed (ERROR: ...). Run it by hand in /work and look at its message.
    """


def record(wb: Workbench) -> dict:
    """The record of every present snapshot: source, inventory, and the files and bytes DVC counts."""
    data: dict = {"schema": RECORD_SCHEMA}
    for kind in KINDS:
        entries = {}
        for row in list_snapshots(wb, kind):
            if not row.present:
                continue
            folder = wb.snapshot_dir(kind, row.name)
            inventory = read_inventory(folder)
            entries[row.name] = {
                "source": inventory.source.to_json(),
                "inventory_digest": inventory.digest,
                "files": len(inventory.files) + 1,  # + inventory.json
                "bytes": inventory.total_size + (folder / INVENTORY_FILE).stat().st_size,
                "inventory": inventory.to_json(),
            }
        data[plural(kind)] = entries
    data["pins"] = _pins(wb, data, _read_record(wb))
    return data


def _pins(wb: Workbench, data: dict, previous: dict) -> dict:
    """The commit of every hub snapshot params.yaml declares that was fetched here, present or not.

    A present snapshot's pin is its own commit; an absent one keeps the pin the previous record
    held for the same repo, so fetching one model does not forget the commits of the others.
    """
    pins: dict = {}
    for kind in KINDS:
        section = {}
        for name, spec in wb.specs(kind).items():
            if spec.repo is None:
                continue
            entry = data.get(plural(kind), {}).get(name)
            if entry is not None:
                source = entry["source"]
                if source.get("type") == "huggingface" and source.get("repo") == spec.repo:
                    section[name] = {
                        "repo": source["repo"],
                        "revision": source["revision"],
                        "requested": source.get("requested_revision"),
                    }
                continue
            pin = _lock_entry(previous, kind, name, spec.repo)
            if pin is not None:
                section[name] = pin
        pins[plural(kind)] = section
    return pins


def _read_record(wb: Workbench) -> dict:
    """The record on disk, or {} when it is missing or unreadable (fetch then uses params.yaml alone)."""
    try:
        data = json.loads((wb.root / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("schema") == RECORD_SCHEMA else {}


def _lock_entry(data: dict, kind: Kind, name: str, repo: str) -> dict | None:
    """What a record holds for ``name`` from ``repo``: {repo, revision (40-hex), requested (the
    branch or tag it was fetched as, None if unknown)}, from its pin, else its present entry."""
    for section in ("pins", None):
        entries = data.get(section, {}) if section else data
        entry = (entries.get(plural(kind)) or {}).get(name) if isinstance(entries, dict) else None
        if not isinstance(entry, dict):
            continue
        c = entry.get("source", entry) if section is None else entry
        if isinstance(c, dict) and c.get("repo") == repo and _COMMIT.match(str(c.get("revision") or "")):
            requested = c.get("requested", c.get("requested_revision"))
            return {"repo": repo, "revision": c["revision"], "requested": requested}
    return None


def locked_commit(
    wb: Workbench, kind: Kind, name: str, repo: str, data: dict | None = None, requested: str | None = None
) -> str | None:
    """The 40-hex commit snapshots.lock records for ``name`` from ``repo``, or None.

    ``requested``: the branch or tag params.yaml names now; a commit recorded as fetched under
    another name (params.yaml moved from ``main`` to ``v2``, or a ``--revision refs/pr/1``) is
    not it, so None. A record that does not say what it was fetched as counts as ``main``.
    """
    entry = _lock_entry(_read_record(wb) if data is None else data, kind, name, repo)
    if entry is None:
        return None
    if requested is not None and (entry["requested"] or "main") != requested:
        return None
    return entry["revision"]


def write_record(wb: Workbench) -> Path:
    path = wb.root / RECORD_FILE
    path.write_text(
        json.dumps(record(wb), indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return path


def is_dvc_repo(wb: Workbench) -> bool:
    return (wb.root / ".dvc").is_dir()


def sync(wb: Workbench, kind: Kind) -> list[str]:
    """After a snapshot changed: rewrite the record, and ``dvc add`` the folder in a DVC repository.

    Returns what was done (or what to run), one line each.
    """
    said = [f"recorded {RECORD_FILE}"]
    write_record(wb)
    folder = plural(kind)
    if not is_dvc_repo(wb):
        return [
            *said,
            f"not a DVC repository: run 'dvc init && dvc add {folder}' to track {folder}/ with DVC",
        ]
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "add", "--quiet", folder], cwd=wb.root, capture_output=True, text=True
    )
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise TrackingError(
            f"'dvc add {folder}' failed ({detail[0]}). Run it by hand in {wb.root} and read its message."
        )
    return [
        *said,
        f"dvc add {folder}: {folder}.dvc updated (commit it with {RECORD_FILE}; 'dvc push' uploads the data)",
    ]


def check(wb: Workbench) -> list[str]:
    """Every disagreement between params.yaml, snapshots.lock and the .dvc files (empty: all agree).

    Reads no snapshot data: this is what CI runs.
    """
    problems: list[str] = []
    # 1. params.yaml pins every hub snapshot to a commit.
    for kind in KINDS:
        for name, spec in wb.specs(kind).items():
            if spec.repo is not None and not _COMMIT.match(spec.revision or ""):
                problems.append(
                    f"params.yaml: {plural(kind)}.{name}.revision is {spec.revision!r}, not a 40-hex commit. Pin it: "
                    f"'harmonia {plural(kind)} fetch {name}' prints the commit it resolved to."
                )
    # 2. The record exists and each entry's inventory is valid and agrees with params.yaml.
    path = wb.root / RECORD_FILE
    if not path.is_file():
        return [
            *problems,
            f"{RECORD_FILE} is missing: run 'harmonia lock' (fetching or building a snapshot writes it too).",
        ]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        return [*problems, f"{RECORD_FILE} is not valid JSON ({exc}): run 'harmonia lock' to rewrite it."]
    if data.get("schema") != RECORD_SCHEMA:
        return [
            *problems,
            f"{RECORD_FILE} has schema {data.get('schema')!r}, expected {RECORD_SCHEMA!r}: run 'harmonia lock'.",
        ]
    for kind in KINDS:
        entries = data.get(plural(kind)) or {}
        specs = wb.specs(kind)
        for name, entry in entries.items():
            where = f"{RECORD_FILE}: {plural(kind)}.{name}"
            try:
                inventory = parse_inventory(entry.get("inventory"), where)
            except InventoryError as exc:
                problems.append(str(exc))
                continue
            if inventory.digest != entry.get("inventory_digest"):
                problems.append(
                    f"{where}: inventory_digest does not match its inventory: run 'harmonia lock'."
                )
            spec = specs.get(name)
            if spec is None:
                problems.append(f"{where} is not declared in params.yaml: declare it or remove the snapshot.")
                continue
            src = inventory.source
            if spec.repo is not None and (
                src.repo != spec.repo
                or (_COMMIT.match(spec.revision or "") and src.revision != spec.revision)
            ):
                problems.append(
                    f"{where} holds {src.repo}@{src.revision} but params.yaml pins {spec.repo}@{spec.revision}: "
                    f"run 'harmonia {plural(kind)} fetch {name}'."
                )
        # 3. The record and <kind>s.dvc count the same files and bytes.
        problems += _check_dvc(wb, kind, entries)
    return problems


def _check_dvc(wb: Workbench, kind: Kind, entries: dict) -> list[str]:
    folder = plural(kind)
    dvc_file = wb.root / f"{folder}.dvc"
    if not entries:
        return []
    if not dvc_file.is_file():
        return [
            f"{folder}.dvc is missing but {RECORD_FILE} lists {len(entries)} {folder}: run 'dvc add {folder}'."
        ]
    try:
        (out,) = [o for o in yaml.safe_load(dvc_file.read_text())["outs"] if o.get("path") == folder]
        dvc_files, dvc_bytes = int(out["nfiles"]), int(out["size"])
    except (ValueError, KeyError, TypeError, yaml.YAMLError):
        return [
            f"{folder}.dvc has no 'outs' entry for {folder} with size and nfiles: run 'dvc add {folder}'."
        ]
    files = sum(int(e.get("files", 0)) for e in entries.values())
    size = sum(int(e.get("bytes", 0)) for e in entries.values())
    if (files, size) != (dvc_files, dvc_bytes):
        return [
            f"{folder}.dvc counts {dvc_files} files, {dvc_bytes} bytes; {RECORD_FILE} counts {files} files, {size} bytes. "
            f"Run 'harmonia lock' and 'dvc add {folder}', then commit both."
        ]
    return []
