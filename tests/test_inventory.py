import json

import pytest

from harmonia.errors import InventoryError
from harmonia.inventory import SCHEMA, FileEntry, Inventory, Source, read_inventory, write_inventory

SHA = "ab" * 32


def _write(folder, data):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "inventory.json").write_text(json.dumps(data) if not isinstance(data, str) else data)


def _valid(**changes):
    data = {
        "schema": SCHEMA,
        "name": "x",
        "kind": "model",
        "source": {"type": "huggingface", "repo": "a/b", "repo_type": "model", "revision": "c" * 40},
        "license": "mit",
        "created": "2026-01-01T00:00:00Z",
        "files": [{"path": "a/b.json", "size": 3, "sha256": SHA}],
        "total_size": 3,
    }
    data.update(changes)
    return data


def test_round_trip_and_digest(tmp_path):
    inv = Inventory("x", "model", Source("synthetic", builder="musicgen", seed=1), "mit",
                    (FileEntry("b", 2, SHA), FileEntry("a", 1, "cd" * 32)))  # fmt: skip
    write_inventory(tmp_path, inv)
    back = read_inventory(tmp_path)
    assert back.files == tuple(sorted(inv.files, key=lambda f: f.path))
    assert back.source == inv.source and back.total_size == 3
    # the digest names the bytes: independent of file order and of the creation date
    later = Inventory(
        "x", "model", inv.source, "mit", tuple(reversed(inv.files)), created="2030-01-01T00:00:00Z"
    )
    assert later.digest == inv.digest
    data = json.loads((tmp_path / "inventory.json").read_text())
    assert data["schema"] == "harmonia.inventory/1" and data["total_size"] == 3
    assert [f["path"] for f in data["files"]] == ["a", "b"]


def test_valid_inventory_reads(tmp_path):
    _write(tmp_path, _valid())
    assert read_inventory(tmp_path).files == (FileEntry("a/b.json", 3, SHA),)


@pytest.mark.parametrize(
    "data, message",
    [
        (
            "{not json",
            "line 1, column 2: Expecting property name enclosed in double quotes. The inventory is corrupt",
        ),
        ([], "must be a JSON object, got list."),
        (_valid(schema="harmonia.inventory/2"), "unknown schema 'harmonia.inventory/2'; this Harmonia reads"),
        (_valid(schema=None), "unknown schema None"),
        (_valid(files=[{"path": "/etc/passwd", "size": 3, "sha256": SHA}]), "is an absolute path"),
        (_valid(files=[{"path": "../outside", "size": 3, "sha256": SHA}]), "leaves the snapshot folder"),
        (_valid(files=[{"path": "a/../../x", "size": 3, "sha256": SHA}]), "leaves the snapshot folder"),
        (_valid(files=[{"path": "a\\b", "size": 3, "sha256": SHA}]), "leaves the snapshot folder"),
        (_valid(files=[{"path": "", "size": 3, "sha256": SHA}]), "must be a non-empty string"),
        (
            _valid(files=[{"path": "inventory.json", "size": 3, "sha256": SHA}]),
            "must not list inventory.json",
        ),
        (_valid(files=[{"path": "a", "size": -1, "sha256": SHA}]), "files[0].size must be an integer >= 0"),
        (
            _valid(files=[{"path": "a", "size": 3, "sha256": "xyz"}]),
            "files[0].sha256 must be 64 lowercase hex",
        ),
        (_valid(files=[{"path": "a", "size": 3}]), "files[0] must have exactly path, size and sha256"),
        (_valid(files=[{"path": "a", "size": 3, "sha256": SHA}] * 2), "files[1].path 'a' is listed twice"),
        (_valid(total_size=4), "total_size 4 is not the sum of the file sizes (3)"),
        (_valid(source={"type": "ftp"}), "source.type must be one of"),
        (_valid(source={"type": "synthetic", "colour": 1}), "source has unexpected fields"),
        (_valid(files="a"), "'files' must be a list"),
    ],
)
def test_malformed_inventories_are_clear_errors(tmp_path, data, message):
    _write(tmp_path, data)
    with pytest.raises(InventoryError) as exc:
        read_inventory(tmp_path)
    assert message in str(exc.value)
    assert str(tmp_path / "inventory.json") in str(exc.value)


def test_missing_inventory(tmp_path):
    with pytest.raises(InventoryError, match="does not exist: the folder is not a snapshot"):
        read_inventory(tmp_path)


def test_hostile_inventories_are_one_line_errors(tmp_path, monkeypatch):
    path = tmp_path / "inventory.json"
    fix = "The inventory is corrupt: fetch or build the snapshot again."
    path.write_bytes(b'{"schema": "\xfe"}')
    with pytest.raises(InventoryError) as exc:
        read_inventory(tmp_path)
    assert str(exc.value) == f"{path} is not UTF-8 text (byte 0xfe at offset 12). {fix}"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InventoryError) as exc:
        read_inventory(tmp_path)
    assert str(exc.value) == f"{path}: collections nested more than 64 levels deep. {fix}"
    monkeypatch.setattr("harmonia.inventory.MAX_INVENTORY_BYTES", 100)
    _write(tmp_path, _valid())
    with pytest.raises(InventoryError) as exc:
        read_inventory(tmp_path)
    assert (
        str(exc.value)
        == f"{path} is {path.stat().st_size:,} bytes, over the 100-byte limit for this file. {fix}"
    )
