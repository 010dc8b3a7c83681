import hashlib
import json
import os
import subprocess
import time
from dataclasses import replace

import pytest

from harmonia.atomic import discard, install
from harmonia.errors import InventoryError, RemoteCodeError, SnapshotMissingError, VerificationError
from harmonia.hashing import git_blob_sha1, hash_files, sha256_file
from harmonia.snapshots import (
    list_snapshots,
    require_loadable,
    require_present,
    require_verified,
    staging_dir,
    verify,
)
from tests.conftest import make_snapshot

FILES = {
    "config.json": b'{"a": 1}',
    "model.safetensors": os.urandom(300_000),
    "sub/dir/vocab.txt": b"a\nb\nc\n",
    "empty.txt": b"",
}


@pytest.fixture
def snap(workbench):
    return make_snapshot(workbench, "toy", FILES)


def test_intact_snapshot_verifies(workbench, snap):
    report = verify(workbench, "model", "toy", full=True)
    assert report.ok and report.problems == ()
    assert (report.files, report.hashed, report.skipped, report.mode) == (4, 4, 0, "full")
    assert report.bytes_hashed == sum(len(d) for d in FILES.values())
    assert report.summary() == "model toy: ok (4 files, 4 hashed, 0 unchanged, full)"


def test_flipped_byte_truncation_missing_and_extra_are_each_named(workbench, snap):
    data = bytearray(FILES["model.safetensors"])
    data[1234] ^= 0x01
    (snap / "model.safetensors").write_bytes(bytes(data))
    (snap / "config.json").write_bytes(FILES["config.json"][:-2])
    (snap / "sub/dir/vocab.txt").unlink()
    (snap / "sub/stray.bin").write_bytes(b"x")
    (snap / ".hidden").write_bytes(b"x")

    report = verify(workbench, "model", "toy")
    assert not report.ok
    assert [(p.kind, p.path) for p in report.problems] == [
        ("modified", "model.safetensors"),
        ("truncated", "config.json"),
        ("missing", "sub/dir/vocab.txt"),
        ("extra", ".hidden"),
        ("extra", "sub/stray.bin"),
    ]
    assert report.problems[1].detail == "6 of 8 bytes"
    assert report.summary() == (
        "model toy: FAILED: 1 modified (model.safetensors); 1 truncated (config.json); "
        "1 missing (sub/dir/vocab.txt); 2 extra (.hidden, sub/stray.bin)"
    )


def test_grown_file_is_modified(workbench, snap):
    (snap / "empty.txt").write_bytes(b"now longer")
    (problem,) = verify(workbench, "model", "toy").problems
    assert (problem.kind, problem.path, problem.detail) == ("modified", "empty.txt", "10 bytes, expected 0")


def test_fast_mode_skips_unchanged_files_and_rehashes_changed_ones(workbench, snap):
    first = verify(workbench, "model", "toy")  # no state yet: hashes everything
    assert (first.hashed, first.skipped) == (4, 0)
    second = verify(workbench, "model", "toy")
    assert (second.hashed, second.skipped, second.ok) == (0, 4, True)

    # same size, new bytes, new mtime: re-hashed and caught
    data = bytearray(FILES["model.safetensors"])
    data[0] ^= 0xFF
    (snap / "model.safetensors").write_bytes(bytes(data))
    third = verify(workbench, "model", "toy")
    assert (third.hashed, third.skipped) == (1, 3)
    assert [(p.kind, p.path) for p in third.problems] == [("modified", "model.safetensors")]
    # still caught on the next fast run: the wrong hash is remembered, not the right one
    assert [p.path for p in verify(workbench, "model", "toy").problems] == ["model.safetensors"]

    # restored with a new inode: re-hashed, ok again
    (snap / "model.safetensors").unlink()
    (snap / "model.safetensors").write_bytes(FILES["model.safetensors"])
    fourth = verify(workbench, "model", "toy")
    assert fourth.ok and fourth.hashed == 1


def _overwrite_keeping_size_and_times(path, data: bytes) -> None:
    st = path.stat()
    assert len(data) == st.st_size
    time.sleep(0.01)  # past a coarse filesystem clock's tick, as any real tampering would be
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # atime and mtime put back
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def test_fast_mode_catches_a_same_size_overwrite_with_the_mtime_restored(workbench, snap):
    assert verify(workbench, "model", "toy").hashed == 4
    weights = bytearray(FILES["model.safetensors"])
    weights[1000:1004] = b"EVIL"
    _overwrite_keeping_size_and_times(snap / "model.safetensors", bytes(weights))
    report = verify(workbench, "model", "toy")  # the ctime moved: re-hashed, not skipped
    assert (report.hashed, report.skipped) == (1, 3)
    assert [(p.kind, p.path) for p in report.problems] == [("modified", "model.safetensors")]
    with pytest.raises(
        VerificationError, match=r"^Model 'toy' failed verification: 1 modified \(model.safetensors\)"
    ):
        require_loadable(workbench, "model", "toy")


def test_full_mode_rehashes_even_when_stat_is_unchanged(workbench, snap):
    verify(workbench, "model", "toy")
    assert verify(workbench, "model", "toy").hashed == 0
    report = verify(workbench, "model", "toy", full=True)
    assert report.ok and report.hashed == 4 and report.mode == "full"


def test_an_old_state_file_means_hashing_again(workbench, snap):
    verify(workbench, "model", "toy")
    path = workbench.root / ".harmonia/verify/models/toy.json"
    state = json.loads(path.read_text())
    old = {rel: [st[0], st[1], st[3], st[5]] for rel, st in state["files"].items()}  # size, mtime, inode, sha
    path.write_text(json.dumps({**state, "schema": "harmonia.verify-state/1", "files": old}))
    assert verify(workbench, "model", "toy").hashed == 4


def test_require_loadable_returns_the_inventory_of_an_intact_snapshot(workbench, snap):
    inventory = require_loadable(workbench, "model", "toy")
    assert inventory.name == "toy" and len(inventory.files) == 4
    assert require_loadable(workbench, "model", "toy", full=True) == inventory


def test_confirm_unchanged_compares_with_its_own_load_not_a_later_one(workbench, snap):
    """Before: it compared with the process-wide record, which another thread's load refreshes after
    a file was written and restored while the first load's model ran: the write went unseen."""
    from harmonia.snapshots import confirm_unchanged

    first = require_loadable(workbench, "model", "toy")
    assert {rel for rel, _ in first.seen} == set(FILES)
    confirm_unchanged(workbench, "model", "toy", first)  # nothing moved since
    weights = bytearray(FILES["model.safetensors"])
    weights[1000:1004] = b"EVIL"
    _overwrite_keeping_size_and_times(snap / "model.safetensors", bytes(weights))
    _overwrite_keeping_size_and_times(snap / "model.safetensors", FILES["model.safetensors"])  # restored
    second = require_loadable(workbench, "model", "toy")  # another view's load: hashed again, intact
    assert second == first and second.seen != first.seen
    with pytest.raises(VerificationError) as caught:
        confirm_unchanged(workbench, "model", "toy", first)
    assert str(caught.value) == (
        "Model 'toy' changed on disk while it was in use (model.safetensors); nothing was written. "
        "Run 'harmonia models verify --full toy', then generate again."
    )
    confirm_unchanged(workbench, "model", "toy", second)
    unverified = replace(first, seen=())  # an inventory no verification returned counts as changed
    with pytest.raises(
        VerificationError, match=r"changed on disk while it was in use \(config.json, empty.txt"
    ):
        confirm_unchanged(workbench, "model", "toy", unverified)


@pytest.mark.parametrize(
    "path, content, where",
    [
        ("config.json", b'{"model_type": "x", "auto_map": {"AutoModel": "modeling_x.XModel"}}', "auto_map"),
        ("tokenizer_config.json", b'{"auto_map": {"AutoTokenizer": ["tok.T", null]}}', "auto_map"),
        ("preprocessor_config.json", b'{"a": [{"auto_map": {}}]}', "a.0.auto_map"),
        (
            "config.json",
            b'{"text_config": {"\\u0061uto_map": {"AutoConfig": "c.C"}}}',
            "text_config.auto_map",
        ),
        ("text_encoder/config.json", b'{"auto_map": {"AutoModel": "m.M"}}', "auto_map"),
    ],
)
def test_configs_that_name_remote_code_are_refused(workbench, path, content, where):
    make_snapshot(workbench, "toy", {**FILES, path: content})
    with pytest.raises(RemoteCodeError) as exc:
        require_loadable(workbench, "model", "toy")
    assert str(exc.value) == (
        f"Model 'toy' cannot be loaded: {path} has the key '{where}', which asks to run Python code from "
        "the model's repo. Harmonia never runs remote code: pick a model whose architecture transformers "
        "or diffusers ship."
    )
    assert verify(workbench, "model", "toy").ok  # the inventory matches: it is refused all the same


def test_data_files_below_the_root_may_mention_auto_map(workbench):
    make_snapshot(workbench, "toy", {**FILES, "data/rows.json": b'[{"auto_map": "a column"}]'})
    assert require_loadable(workbench, "model", "toy").name == "toy"


def test_state_lives_outside_the_snapshot(workbench, snap):
    verify(workbench, "model", "toy")
    on_disk = sorted(str(p.relative_to(snap)) for p in snap.rglob("*") if p.is_file())
    assert on_disk == ["config.json", "empty.txt", "inventory.json", "model.safetensors", "sub/dir/vocab.txt"]
    state = json.loads((workbench.root / ".harmonia/verify/models/toy.json").read_text())
    assert state["schema"] == "harmonia.verify-state/2" and state["last"]["ok"] is True
    st = (snap / "config.json").stat()
    assert state["files"]["config.json"] == [
        st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, hashlib.sha256(FILES["config.json"]).hexdigest()
    ]  # fmt: skip


def test_symlink_leaving_the_snapshot_is_rejected(workbench, snap, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"a\nb\nc\n")
    (snap / "sub/dir/vocab.txt").unlink()
    (snap / "sub/dir/vocab.txt").symlink_to(outside)
    with pytest.raises(InventoryError, match=r"sub/dir/vocab.txt is a symlink to .*outside the snapshot"):
        verify(workbench, "model", "toy")


def test_symlinked_folder_leaving_the_snapshot_is_rejected(workbench, snap, tmp_path):
    (snap / "escape").symlink_to(tmp_path)
    with pytest.raises(InventoryError, match=r"escape is a symlink to .*outside the snapshot"):
        verify(workbench, "model", "toy")


def test_symlink_inside_the_snapshot_is_followed(workbench, snap):
    (snap / "empty.txt").unlink()
    (snap / "real-empty").write_bytes(b"")
    (snap / "empty.txt").symlink_to("real-empty")
    report = verify(workbench, "model", "toy", full=True)
    assert [(p.kind, p.path) for p in report.problems] == [("extra", "real-empty")]


def test_missing_snapshot_says_how_to_get_it(workbench):
    with pytest.raises(SnapshotMissingError) as exc:
        verify(workbench, "model", "toy")
    assert str(exc.value) == (
        f"Model 'toy' has no snapshot in {workbench.root / 'models/toy'}. Run: harmonia models fetch toy"
    )
    with pytest.raises(
        SnapshotMissingError, match=r"Run: harmonia models tiny musicgen --name tiny-musicgen --seed 0"
    ):
        verify(workbench, "model", "tiny-musicgen")


def test_require_verified_refuses_a_damaged_snapshot(workbench, snap):
    assert require_verified(workbench, "model", "toy").name == "toy"
    (snap / "config.json").unlink()
    with pytest.raises(VerificationError) as exc:
        require_verified(workbench, "model", "toy")
    assert str(exc.value) == (
        "Model 'toy' failed verification: 1 missing (config.json). Run 'harmonia models verify toy' "
        "for details, then 'harmonia models fetch toy' to restore it."
    )


def test_list_shows_declared_present_and_verification_state(workbench, snap):
    make_snapshot(workbench, "undeclared", {"a": b"1"})
    rows = {r.name: r for r in list_snapshots(workbench, "model")}
    assert rows["toy"].present and rows["toy"].verified == "never" and rows["toy"].size == 300_014
    assert rows["toy"].revision == "seed=0" and rows["toy"].source == "synthetic:hand"
    assert not rows["private"].present and rows["private"].verified == "missing"
    assert rows["private"].source == "hf:acme/private"
    assert not rows["undeclared"].declared and rows["undeclared"].present
    verify(workbench, "model", "toy")
    assert {r.name: r for r in list_snapshots(workbench, "model")}["toy"].verified == "ok"
    (snap / "config.json").unlink()
    verify(workbench, "model", "toy")
    assert {r.name: r for r in list_snapshots(workbench, "model")}["toy"].verified == "failed"


def test_install_replaces_a_snapshot_whole(workbench, snap):
    staging = staging_dir(workbench, "model", "toy")
    (staging / "only.txt").write_text("new")
    install(staging, snap)
    assert sorted(p.name for p in snap.iterdir()) == ["only.txt"]
    assert [p.name for p in workbench.kind_dir("model").iterdir()] == ["toy"]


def test_a_live_staging_folder_is_kept_and_a_discarded_one_is_gone(workbench):
    first = staging_dir(workbench, "model", "toy")
    second = staging_dir(workbench, "model", "toy")  # another thread's writer: left alone
    assert first.exists() and second.exists()
    discard(first)
    discard(second)
    assert list(workbench.kind_dir("model").iterdir()) == []


def test_parallel_hashes_match_hashlib_and_git(tmp_path):
    paths = []
    for i in range(20):
        p = tmp_path / f"f{i}"
        p.write_bytes(os.urandom(i * 70_001))
        paths.append(p)
    seen = []
    digests = hash_files(paths, workers=2, progress=seen.append)
    for p in paths:
        assert digests[str(p)] == hashlib.sha256(p.read_bytes()).hexdigest() == sha256_file(p)
    assert sum(seen) == sum(p.stat().st_size for p in paths)
    git = subprocess.run(["git", "hash-object", str(paths[3])], capture_output=True, text=True, check=True)
    assert git_blob_sha1(paths[3]) == git.stdout.strip()


def test_the_report_names_the_inventory_digest(workbench, snap):
    from harmonia.inventory import read_inventory

    report = verify(workbench, "model", "toy")
    assert report.inventory_digest == read_inventory(snap).digest
    assert report.to_json()["inventory_digest"] == report.inventory_digest


def test_require_present_names_every_missing_snapshot_and_how_to_get_it(workbench, snap):
    require_present(workbench, [("model", "toy")])
    targets = [("model", "toy"), ("model", "private"), ("model", "tiny-musicgen"), ("dataset", "captions")]
    with pytest.raises(SnapshotMissingError) as exc:
        require_present(workbench, [*targets, ("model", "private")])
    assert str(exc.value) == (
        "Not here yet: model private, model tiny-musicgen, dataset captions. Run: harmonia models fetch private "
        "&& harmonia models tiny musicgen --name tiny-musicgen --seed 0 && harmonia datasets fetch captions "
        "(or 'dvc pull' if your DVC remote holds them)."
    )
    with pytest.raises(SnapshotMissingError) as exc:
        require_present(workbench, [("model", "private")])
    assert str(exc.value) == (
        "Not here yet: model private. Run: harmonia models fetch private (or 'dvc pull' if your DVC remote "
        "holds it)."
    )


def test_load_mode_trusts_no_hash_but_this_process_own(workbench, snap, monkeypatch):
    import harmonia.snapshots as snapshots

    assert verify(workbench, "model", "toy", mode="load").hashed == 4
    assert verify(workbench, "model", "toy", mode="load").hashed == 0  # hashed here, unchanged since
    monkeypatch.setattr(snapshots, "_HASHED_HERE", {})  # a fresh process
    assert verify(workbench, "model", "toy").hashed == 0  # the fast verify trusts the state file
    report = verify(workbench, "model", "toy", mode="load")
    assert (report.mode, report.hashed, report.skipped) == ("load", 4, 0)
