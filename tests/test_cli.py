"""The CLI as a user runs it: output, exit codes, JSON."""

import json

from tests.conftest import make_snapshot, run_cli


def test_list_prints_a_table(workbench):
    make_snapshot(workbench, "toy", {"a.json": b"{}"})
    proc = run_cli("models", "list", cwd=workbench.root / "notebooks")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["NAME", "SOURCE", "REVISION", "SIZE", "LICENSE", "VERIFIED"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["toy"] == ["toy", "synthetic:hand", "seed=0", "2", "B", "mit", "never"]
    assert rows["private"] == ["private", "hf:acme/private", "-", "-", "-", "missing"]


def test_list_json(workbench):
    proc = run_cli("datasets", "list", "--json", cwd=workbench.root)
    assert json.loads(proc.stdout) == [
        {
            "name": "captions",
            "kind": "dataset",
            "declared": True,
            "present": False,
            "source": "hf:acme/captions",
            "revision": None,
            "size": None,
            "license": "cc-by-4.0",
            "verified": "missing",
            "verified_at": None,
        }
    ]


def test_verify_exit_codes_and_report(workbench):
    folder = make_snapshot(workbench, "toy", {"a.json": b"{}", "b.bin": b"12345"})
    ok = run_cli("models", "verify", cwd=workbench.root)
    assert (ok.returncode, ok.stdout) == (0, "model toy: ok (2 files, 2 hashed, 0 unchanged, fast)\n")
    (folder / "b.bin").write_bytes(b"123")
    bad = run_cli("models", "verify", "toy", cwd=workbench.root)
    assert bad.returncode == 1
    assert bad.stdout == "model toy: FAILED: 1 truncated (b.bin)\n  truncated b.bin: 3 of 5 bytes\n"
    as_json = run_cli("models", "verify", "toy", "--full", "--json", cwd=workbench.root)
    (report,) = json.loads(as_json.stdout)
    assert as_json.returncode == 1 and report["ok"] is False and report["mode"] == "full"
    assert report["problems"] == [{"path": "b.bin", "kind": "truncated", "detail": "3 of 5 bytes"}]


def test_errors_are_one_line_and_exit_2(workbench, tmp_path):
    proc = run_cli("models", "fetch", "nope", cwd=workbench.root)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: Unknown model 'nope'. Known models: broken, corrupt,")
    assert "Traceback" not in proc.stderr
    missing = run_cli("models", "verify", "toy", cwd=workbench.root)
    assert missing.returncode == 2 and "Run: harmonia models fetch toy" in missing.stderr
    nowhere = run_cli("models", "list", cwd=tmp_path)
    assert nowhere.returncode == 2 and nowhere.stderr.startswith("error: No Harmonia workbench found")


def test_tiny_prints_what_it_built(workbench):
    proc = run_cli("models", "tiny", "musicgen", cwd=workbench.root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("built: model tiny-musicgen = tiny musicgen, seed 0 (6 files, ")
    assert proc.stdout.rstrip().endswith("in models/tiny-musicgen/")
    assert proc.stderr == ""


def test_dataset_fetch_through_the_cli(workbench, hub):
    proc = run_cli("datasets", "fetch", "captions", cwd=workbench.root, env={"HF_ENDPOINT": hub.url})
    assert proc.returncode == 0, proc.stderr
    commit = hub.repos[("dataset", "acme/captions")].refs["main"]
    assert (
        proc.stdout
        == f"fetched: dataset captions = acme/captions@{commit} (1 files, 24 B) in datasets/captions/\n"
    )
    again = run_cli("datasets", "fetch", "captions", cwd=workbench.root, env={"HF_ENDPOINT": hub.url})
    assert again.stdout.startswith("already present: dataset captions")
