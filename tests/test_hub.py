"""Fetch end to end: the real huggingface_hub client against a local hub on 127.0.0.1."""

import hashlib
import re

import pytest

from harmonia.errors import FetchError
from harmonia.hub import fetch
from harmonia.inventory import read_inventory
from harmonia.snapshots import verify
from tests.conftest import TOY_FILES, run_cli

TOKEN = "hf_privateTOKEN1234567890"


def _leftovers(wb):
    """Everything fetch may have left in models/ (there must be nothing after a failure)."""
    folder = wb.kind_dir("model")
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _downloads(hub):
    return [path for method, path, _ in hub.requests if method == "GET" and "/resolve/" in path]


def test_fetch_pins_the_revision_and_checks_every_file(workbench, hub):
    result = fetch(workbench, "model", "toy", endpoint=hub.url)
    commit = hub.repos[("model", "acme/toy")].refs["main"]
    inv = read_inventory(workbench.snapshot_dir("model", "toy"))
    assert re.fullmatch(r"[0-9a-f]{40}", inv.source.revision) and inv.source.revision == commit
    assert inv.source.requested_revision == "main"
    assert (inv.source.type, inv.source.repo, inv.source.repo_type) == ("huggingface", "acme/toy", "model")
    assert inv.license == "mit" and not result.reused
    # pickled weights are not downloaded without --allow-pickle
    assert [f.path for f in inv.files] == ["config.json", "docs/notes.md", "model.safetensors"]
    for f in inv.files:
        assert f.sha256 == hashlib.sha256(TOY_FILES[f.path]).hexdigest()
        assert f.size == len(TOY_FILES[f.path])
    assert inv.total_size == sum(f.size for f in inv.files)
    # no hub cache folder inside the snapshot, nothing beside it
    folder = workbench.snapshot_dir("model", "toy")
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        "config.json", "docs/notes.md", "inventory.json", "model.safetensors"
    ]  # fmt: skip
    assert _leftovers(workbench) == ["toy"]
    # the fetch recorded its hashes: a fast verify re-hashes nothing
    report = verify(workbench, "model", "toy")
    assert report.ok and report.hashed == 0


def test_allow_pickle_takes_pickled_weights(workbench, hub):
    inv = fetch(workbench, "model", "toy", allow_pickle=True, endpoint=hub.url).inventory
    assert "pytorch_model.bin" in [f.path for f in inv.files]


def test_refetch_of_the_same_commit_downloads_nothing(workbench, hub):
    fetch(workbench, "model", "toy", endpoint=hub.url)
    before = len(_downloads(hub))
    again = fetch(workbench, "model", "toy", endpoint=hub.url)
    assert again.reused and len(_downloads(hub)) == before


def test_new_commit_replaces_the_snapshot_and_old_commit_stays_fetchable(workbench, hub):
    repo = hub.repos[("model", "acme/toy")]
    old = repo.refs["main"]
    fetch(workbench, "model", "toy", endpoint=hub.url)
    new = repo.add_commit({"config.json": b'{"v": 2}', "model.safetensors": b"new weights"})
    inv = fetch(workbench, "model", "toy", endpoint=hub.url).inventory
    assert inv.source.revision == new and [f.path for f in inv.files] == ["config.json", "model.safetensors"]
    assert not (workbench.snapshot_dir("model", "toy") / "docs").exists()
    inv = fetch(workbench, "model", "toy", revision=old, endpoint=hub.url).inventory
    assert inv.source.revision == old and inv.source.requested_revision == old
    assert _leftovers(workbench) == ["toy"]


def test_dataset_fetch(workbench, hub):
    result = fetch(workbench, "dataset", "captions", endpoint=hub.url)
    assert result.path == workbench.root / "datasets" / "captions"
    inv = result.inventory
    assert (inv.kind, inv.source.repo_type, inv.license) == ("dataset", "dataset", "cc-by-4.0")
    assert [f.path for f in inv.files] == ["captions.csv"]


def test_token_is_sent_as_a_header_and_written_nowhere(workbench, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    fetch(workbench, "model", "private", endpoint=hub.url)
    auth = {h.get("authorization") for _, path, h in hub.requests if "acme/private" in path}
    assert auth == {f"Bearer {TOKEN}"}
    for path in workbench.root.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_token_from_dot_env(workbench, hub):
    (workbench.root / ".env").write_text(f"# secrets\nHF_TOKEN={TOKEN}\n")
    inv = fetch(workbench, "model", "private", endpoint=hub.url).inventory
    assert [f.path for f in inv.files] == ["config.json"]


def test_cli_fetch_with_token_prints_no_token(workbench, hub):
    proc = run_cli(
        "models", "fetch", "private", cwd=workbench.root, env={"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN}
    )
    assert proc.returncode == 0, proc.stderr
    commit = hub.repos[("model", "acme/private")].refs["main"]
    assert (
        proc.stdout.splitlines()[0]
        == f"fetched: model private = acme/private@{commit} (1 files, 2 B) in models/private/"
    )
    assert TOKEN not in proc.stdout + proc.stderr
    for path in workbench.root.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_private_repo_without_token(workbench, hub):
    with pytest.raises(FetchError) as exc:
        fetch(workbench, "model", "private", endpoint=hub.url)
    assert str(exc.value) == (
        f"acme/private was not found on {hub.url}, or it is private and no token was sent: put "
        "HF_TOKEN=hf_... in .env (or the environment). Check 'repo' for private in params.yaml, then run "
        "'harmonia models fetch private' again."
    )
    assert _leftovers(workbench) == []


def test_private_repo_with_a_wrong_token(workbench, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrongWRONGwrong")
    with pytest.raises(FetchError, match="the token in HF_TOKEN cannot read it") as exc:
        fetch(workbench, "model", "private", endpoint=hub.url)
    assert "hf_wrongWRONGwrong" not in str(exc.value)


def test_gated_repo_without_token(workbench, hub):
    with pytest.raises(FetchError) as exc:
        fetch(workbench, "model", "gated", endpoint=hub.url)
    assert str(exc.value) == (
        "acme/gated is gated and no token was sent: put HF_TOKEN=hf_... in .env (or the environment), "
        f"accept its terms at {hub.url}/acme/gated, then run 'harmonia models fetch gated' again."
    )
    assert _leftovers(workbench) == []


def test_unknown_repo(workbench, hub):
    with pytest.raises(
        FetchError, match=r"^acme/ghost was not found on http://127\.0\.0\.1:\d+, or it is private"
    ):
        fetch(workbench, "model", "ghost", endpoint=hub.url)
    assert _leftovers(workbench) == []


def test_unknown_revision(workbench, hub):
    with pytest.raises(FetchError) as exc:
        fetch(workbench, "model", "toy", revision="v9.9", endpoint=hub.url)
    assert str(exc.value) == (
        "acme/toy has no revision 'v9.9'. Fix 'revision' for toy in params.yaml (a branch, tag or 40-hex "
        "commit) or pass --revision."
    )
    assert _leftovers(workbench) == []


def test_dropped_connection_leaves_no_snapshot(workbench, hub):
    with pytest.raises(FetchError) as exc:
        fetch(workbench, "model", "broken", endpoint=hub.url)
    assert str(exc.value).startswith("The download of acme/broken broke off (")
    assert str(exc.value).endswith(
        "Nothing was kept; check the network, then run 'harmonia models fetch broken' again."
    )
    assert _leftovers(workbench) == []
    # the file was really requested, and more than once (the client retried)
    assert len([p for p in _downloads(hub) if p.endswith("model.safetensors")]) >= 2


def test_dropped_connection_keeps_the_previous_snapshot(workbench, hub):
    fetch(workbench, "model", "toy", endpoint=hub.url)
    repo = hub.repos[("model", "acme/toy")]
    repo.add_commit({"model.safetensors": b"\3" * 200_000})
    repo.drop.add("model.safetensors")
    with pytest.raises(FetchError, match="broke off"):
        fetch(workbench, "model", "toy", endpoint=hub.url)
    assert _leftovers(workbench) == ["toy"]
    assert verify(workbench, "model", "toy", full=True).ok


def test_bytes_that_do_not_match_the_hub_lfs_sha256_are_refused(workbench, hub):
    with pytest.raises(FetchError) as exc:
        fetch(workbench, "model", "corrupt", endpoint=hub.url)
    sha = hashlib.sha256(b"\2" * 10_000).hexdigest()
    assert str(exc.value) == (
        f"The download of acme/corrupt failed its checks: model.safetensors does not match the hub's sha256 "
        f"({sha[:12]}…). Nothing was kept; run 'harmonia models fetch corrupt' again."
    )
    assert _leftovers(workbench) == []


def test_hub_down(workbench):
    with pytest.raises(FetchError) as exc:
        fetch(workbench, "model", "toy", endpoint="http://127.0.0.1:9")
    assert str(exc.value) == (
        "Could not reach the hub at http://127.0.0.1:9: check the network (or HF_ENDPOINT), then run "
        "'harmonia models fetch toy' again."
    )
    assert _leftovers(workbench) == []


def test_offline_mode_is_a_clear_error(workbench, hub):
    proc = run_cli(
        "models", "fetch", "toy", cwd=workbench.root, env={"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "1"}
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        "error: HF_HUB_OFFLINE=1 is set, so acme/toy cannot be downloaded. Run the fetch with HF_HUB_OFFLINE=0 "
        "(e.g. 'HF_HUB_OFFLINE=0 harmonia models fetch toy').\n"
    )
    assert hub.requests == [] and _leftovers(workbench) == []


def test_synthetic_models_are_built_not_fetched(workbench):
    with pytest.raises(
        FetchError, match=r"is built in code, not fetched. Run: harmonia models tiny musicgen"
    ):
        fetch(workbench, "model", "tiny-musicgen")


def test_patterns_that_match_nothing(workbench, hub):
    (workbench.root / "params.yaml").write_text(
        "models:\n  toy: {repo: acme/toy, allow_patterns: ['*.gguf']}\n"
    )
    from harmonia.workbench import Workbench

    with pytest.raises(
        FetchError, match=r"No file of acme/toy@[0-9a-f]{12} matches allow_patterns=\['\*.gguf'\]"
    ):
        fetch(Workbench.open(workbench.root), "model", "toy", endpoint=hub.url)


# -- pickles: params.yaml's allow_pickle is consent; a pickle-only repo without it is refused ----------
PICKLE_PARAMS = """\
models:
  toy:
    repo: acme/toy
  consented:
    repo: acme/pk
    allow_pickle: true
    allow_patterns: ["state_dict.bin", "mbd.th", "README.md"]
  unconsented:
    repo: acme/pk
    allow_patterns: ["state_dict.bin", "mbd.th", "README.md"]
"""
PK_FILES = {"state_dict.bin": b"PICKLE" * 50, "mbd.th": b"TORCH" * 40, "README.md": b"# pk\n"}


def _pickle_workbench(workbench, hub):
    from harmonia.workbench import Workbench

    hub.add_repo("acme/pk", PK_FILES)
    (workbench.root / "params.yaml").write_text(PICKLE_PARAMS)
    return Workbench.open(workbench.root)


def test_allow_pickle_in_params_yaml_takes_the_pickles_without_the_flag(workbench, hub):
    wb = _pickle_workbench(workbench, hub)
    result = fetch(wb, "model", "consented", endpoint=hub.url)
    assert [f.path for f in result.inventory.files] == ["README.md", "mbd.th", "state_dict.bin"]
    assert result.pickle_consent == "allow_pickle: true" and result.pickles == ("mbd.th", "state_dict.bin")
    flagged = fetch(wb, "model", "unconsented", allow_pickle=True, endpoint=hub.url)
    assert flagged.pickle_consent == "--allow-pickle" and len(flagged.inventory.files) == 3


def test_a_pickle_only_selection_without_consent_is_refused_and_nothing_is_written(workbench, hub):
    wb = _pickle_workbench(workbench, hub)
    commit = hub.repos[("model", "acme/pk")].refs["main"]
    with pytest.raises(FetchError) as exc:
        fetch(wb, "model", "unconsented", endpoint=hub.url)
    assert str(exc.value) == (
        f"acme/pk@{commit[:12]} has only pickled weights (mbd.th, state_dict.bin) and without them "
        "unconsented would hold only README.md: pass --allow-pickle, or set allow_pickle: true for "
        "unconsented in params.yaml, to take them. Nothing was written."
    )
    assert _leftovers(wb) == [] and not _downloads(hub)


def test_fetch_all_reports_a_refused_model_and_fetches_the_others(workbench, hub):
    wb = _pickle_workbench(workbench, hub)
    proc = run_cli("models", "fetch", "--all", cwd=wb.root, env={"HF_ENDPOINT": hub.url})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    pk = hub.repos[("model", "acme/pk")].refs["main"]
    fetched = [line for line in proc.stdout.splitlines() if line.startswith("fetched: ")]
    assert fetched[0].startswith("fetched: model toy = acme/toy@") and fetched[0].endswith(" in models/toy/")
    assert fetched[1] == (
        f"fetched: model consented = acme/pk@{pk} (3 files, 505 B) in models/consented/; "
        "pickled weights taken (params.yaml's allow_pickle: true): mbd.th, state_dict.bin"
    )
    errors = proc.stderr.strip().splitlines()[-2:]
    assert errors[0].startswith(f"error: model unconsented: acme/pk@{pk[:12]} has only pickled weights")
    assert errors[1] == "error: 1 of 3 models not fetched: unconsented"
    assert _leftovers(wb) == ["consented", "toy"]


def test_the_allow_pickle_help_lists_the_code_s_pickle_patterns(workbench):
    from harmonia.workbench import PICKLE_PATTERNS

    proc = run_cli("models", "fetch", "--help", cwd=workbench.root, env={"COLUMNS": "400"})
    assert f"also download pickled weights ({', '.join(PICKLE_PATTERNS)})" in proc.stdout
    assert "*.th" in PICKLE_PATTERNS and "*.pickle" in PICKLE_PATTERNS


# -- revision main: the commit snapshots.lock records is the pin ----------------------------------------
def test_a_branch_revision_is_fetched_at_the_commit_the_lock_records(workbench, hub, tmp_path):
    import shutil

    from harmonia.tracking import write_record
    from harmonia.workbench import Workbench

    repo = hub.repos[("model", "acme/toy")]
    first = repo.refs["main"]
    fetch(workbench, "model", "toy", endpoint=hub.url)
    write_record(workbench)  # what 'harmonia models fetch' does after a fetch
    second = repo.add_commit({"config.json": b'{"v": 2}', "model.safetensors": b"moved on"})

    # A second machine: params.yaml and the committed lock, no snapshots.
    other = tmp_path / "other"
    other.mkdir()
    for name in ("params.yaml", "snapshots.lock"):
        shutil.copy(workbench.root / name, other / name)
    wb2 = Workbench.open(other)
    fetch(wb2, "dataset", "captions", endpoint=hub.url)  # another snapshot rewrites the lock ...
    write_record(wb2)  # ... and keeps toy's pin although toy is not here
    proc = run_cli("models", "fetch", "toy", cwd=other, env={"HF_ENDPOINT": hub.url})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == (
        f"revision main: using the commit snapshots.lock records ({first[:12]}…); "
        "pass --revision main to move to the newest"
    )
    assert lines[1].startswith(f"fetched: model toy = acme/toy@{first} (3 files, ")
    assert read_inventory(wb2.snapshot_dir("model", "toy")).source.revision == first

    moved = fetch(wb2, "model", "toy", revision="main", endpoint=hub.url)  # --revision main overrides
    assert moved.inventory.source.revision == second and moved.notes == ()
    write_record(wb2)
    again = fetch(wb2, "model", "toy", endpoint=hub.url)  # and the lock now pins the new commit
    assert again.reused and again.inventory.source.revision == second
    assert again.notes == (
        f"revision main: using the commit snapshots.lock records ({second[:12]}…); "
        "pass --revision main to move to the newest",
    )


def test_a_lock_entry_for_another_repo_is_not_a_pin(workbench, hub):
    import json

    from harmonia.tracking import write_record

    fetch(workbench, "model", "toy", endpoint=hub.url)
    write_record(workbench)
    lock = json.loads((workbench.root / "snapshots.lock").read_text())
    assert lock["pins"]["models"]["toy"] == {
        "repo": "acme/toy",
        "revision": hub.repos[("model", "acme/toy")].refs["main"],
        "requested": "main",
    }
    lock["pins"]["models"]["toy"]["repo"] = "acme/elsewhere"
    lock["models"]["toy"]["source"]["repo"] = "acme/elsewhere"
    (workbench.root / "snapshots.lock").write_text(json.dumps(lock))
    new = hub.repos[("model", "acme/toy")].add_commit({"config.json": b"{}"})
    result = fetch(workbench, "model", "toy", endpoint=hub.url)
    assert result.inventory.source.revision == new and result.notes == ()


def test_a_lock_pin_fetched_as_another_branch_is_not_used(workbench, hub):
    """params.yaml moved from main to v2: the commit the lock holds for main is not v2's."""
    from harmonia.tracking import write_record
    from harmonia.workbench import Workbench

    repo = hub.repos[("model", "acme/toy")]
    first = fetch(workbench, "model", "toy", endpoint=hub.url)
    assert first.inventory.source.requested_revision == "main"
    write_record(workbench)
    again = fetch(workbench, "model", "toy", endpoint=hub.url)  # the lock's commit, asked as main
    assert again.notes and again.inventory.source.requested_revision == "main"
    v2 = repo.add_commit({"config.json": b'{"v": 2}', "model.safetensors": b"v2"}, ref="v2")
    params = workbench.root / "params.yaml"
    params.write_text(
        params.read_text().replace("repo: acme/toy\n    revision: main", "repo: acme/toy\n    revision: v2")
    )
    moved = fetch(Workbench.open(workbench.root), "model", "toy", endpoint=hub.url)
    assert moved.inventory.source.revision == v2 and moved.notes == ()
    assert moved.inventory.source.requested_revision == "v2"
