"""Inventories: the record of exactly which bytes a snapshot holds (schema harmonia.inventory/1).

``models/NAME/inventory.json`` names the snapshot's source (a hub repo at a 40-hex commit,
or a tiny builder and its seed), its license, and every file with its size and sha256.
Reading one validates it completely; anything odd is an :class:`InventoryError`, never a
guess. This module knows the file format and the rules for paths; it does not hash or
download.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from harmonia.errors import InventoryError
from harmonia.safeload import load_json

SCHEMA = "harmonia.inventory/1"
INVENTORY_FILE = "inventory.json"
SOURCE_TYPES = ("huggingface", "synthetic")

MAX_INVENTORY_BYTES = 64 << 20  # about 400,000 files at ~150 bytes each

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class FileEntry:
    """One file of a snapshot: its path relative to the snapshot folder (POSIX), size, sha256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Source:
    """Where a snapshot's bytes came from."""

    type: str  # "huggingface", "synthetic" (or "endpoint", in memory only)
    # huggingface: the repo and the 40-hex commit its revision resolved to
    repo: str | None = None
    repo_type: str | None = None
    revision: str | None = None
    requested_revision: str | None = None
    # synthetic: the tiny builder, its seed, and the library versions that fix its bytes
    builder: str | None = None
    seed: int | None = None
    versions: dict[str, str] | None = None
    # endpoint (never on disk: a model served by an OpenAI-compatible server): its base URL;
    # repo is then the model name sent to it
    endpoint: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Inventory:
    """A parsed, validated inventory.json.

    Example:
        >>> inv = Inventory("x", "model", Source("synthetic", builder="musicgen", seed=0),
        ...                 license="mit", files=(FileEntry("a.json", 2, "0" * 64),))
        >>> inv.total_size, len(inv.digest)
        (2, 64)
    """

    name: str
    kind: str
    source: Source
    license: str | None
    files: tuple[FileEntry, ...]
    created: str = field(default_factory=lambda: utc_now())
    # the stat facts this process verified the files under, path -> (size, mtime_ns, ctime_ns, inode,
    # device, sha256): set by a verification (``require_loadable``), compared by ``confirm_unchanged``;
    # never written, never part of equality or the digest
    seen: tuple[tuple[str, tuple], ...] = field(default=(), compare=False, repr=False)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def digest(self) -> str:
        """sha256 over the sorted (path, size, sha256) list: names the bytes, not the record's date."""
        canon = json.dumps(
            [[f.path, f.size, f.sha256] for f in sorted(self.files, key=lambda f: f.path)],
            separators=(",", ":"),
        )
        return hashlib.sha256(canon.encode()).hexdigest()

    def by_path(self) -> dict[str, FileEntry]:
        return {f.path: f for f in self.files}

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "name": self.name,
            "kind": self.kind,
            "source": self.source.to_json(),
            "license": self.license,
            "created": self.created,
            "files": [asdict(f) for f in sorted(self.files, key=lambda f: f.path)],
            "total_size": self.total_size,
        }


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_relpath(path: Any, where: str) -> str:
    """A snapshot-relative POSIX path: not absolute, no '..', no empty or '.' parts, no backslash."""
    if not isinstance(path, str) or not path:
        raise InventoryError(f"{where} must be a non-empty string, got {path!r}.")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise InventoryError(f"{where} {path!r} is an absolute path; inventory paths are relative.")
    parts = PurePosixPath(path).parts
    if "\\" in path or "\0" in path or any(p in ("..", ".") for p in path.split("/")) or not parts:
        raise InventoryError(f"{where} {path!r} leaves the snapshot folder or is not a plain relative path.")
    if path == INVENTORY_FILE:
        raise InventoryError(f"{where} must not list {INVENTORY_FILE} itself.")
    return path


def parse_inventory(data: Any, origin: str) -> Inventory:
    """Validate the JSON of an inventory; ``origin`` names it in error messages."""
    fix = "The inventory is corrupt or was edited by hand: fetch or build the snapshot again."

    def bad(msg: str) -> InventoryError:
        return InventoryError(f"{origin}: {msg} {fix}")

    if not isinstance(data, dict):
        raise bad(f"must be a JSON object, got {type(data).__name__}.")
    schema = data.get("schema")
    if schema != SCHEMA:
        raise InventoryError(
            f"{origin}: unknown schema {schema!r}; this Harmonia reads {SCHEMA!r}. "
            "Upgrade Harmonia or fetch the snapshot again."
        )
    for key, kind in (("name", str), ("kind", str), ("source", dict), ("files", list)):
        if not isinstance(data.get(key), kind):
            raise bad(f"'{key}' must be a {kind.__name__}, got {data.get(key)!r:.80}.")
    source = data["source"]
    if source.get("type") not in SOURCE_TYPES:
        raise bad(f"source.type must be one of {SOURCE_TYPES}, got {source.get('type')!r}.")
    try:
        src = Source(**source)
    except TypeError as exc:
        raise bad(f"source has unexpected fields ({exc}).") from None
    files, seen = [], set()
    for i, entry in enumerate(data["files"]):
        where = f"files[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"path", "size", "sha256"}:
            raise bad(f"{where} must have exactly path, size and sha256, got {entry!r:.120}.")
        try:
            path = check_relpath(entry["path"], f"{where}.path")
        except InventoryError as exc:
            raise bad(str(exc)) from None
        size, sha = entry["size"], entry["sha256"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise bad(f"{where}.size must be an integer >= 0, got {size!r}.")
        if not isinstance(sha, str) or not _HEX64.match(sha):
            raise bad(f"{where}.sha256 must be 64 lowercase hex digits, got {sha!r:.80}.")
        if path in seen:
            raise bad(f"{where}.path {path!r} is listed twice.")
        seen.add(path)
        files.append(FileEntry(path, size, sha))
    total = data.get("total_size")
    inv = Inventory(
        name=data["name"],
        kind=data["kind"],
        source=src,
        license=data.get("license"),
        files=tuple(files),
        created=str(data.get("created", "")),
    )
    if total is not None and total != inv.total_size:
        raise bad(f"total_size {total!r} is not the sum of the file sizes ({inv.total_size}).")
    return inv


def read_inventory(snapshot_dir: str | os.PathLike[str]) -> Inventory:
    """Read and validate ``snapshot_dir/inventory.json``."""
    path = Path(snapshot_dir) / INVENTORY_FILE
    try:
        data = load_json(
            path,
            str(path),
            max_bytes=MAX_INVENTORY_BYTES,
            error=InventoryError,
            fix="The inventory is corrupt: fetch or build the snapshot again.",
        )
    except FileNotFoundError:
        raise InventoryError(
            f"{path} does not exist: the folder is not a snapshot. Fetch or build it again."
        ) from None
    return parse_inventory(data, str(path))


def write_inventory(snapshot_dir: str | os.PathLike[str], inventory: Inventory) -> Path:
    """Write inventory.json atomically (temporary file, fsync, rename)."""
    path = Path(snapshot_dir) / INVENTORY_FILE
    tmp = path.with_name(f".{INVENTORY_FILE}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(inventory.to_json(), f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def is_sha256(text: str) -> bool:
    return bool(_HEX64.match(text))
