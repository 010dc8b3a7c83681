"""The DVC pipeline in a temporary git + DVC repository built from the project's files, on tiny models."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from harmonia.tracking import check, write_record
from harmonia.workbench import Workbench
from tests.conftest import REPO_ROOT

BIN = os.path.dirname(sys.executable)
GIT = ["git", "-c", "user.email=ci@harmonia", "-c", "user.name=ci"]


def run(*args, cwd, ok=True):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "HARMONIA_ROOT": str(cwd)}
    proc = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if ok:
        assert proc.returncode == 0, f"{args}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    return proc


def stages_run(output: str) -> list[str]:
    return sorted(line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage"))


@pytest.fixture(scope="module")
def repo_template(tmp_path_factory, tiny_models):
    """The git + DVC workbench, built once per module (about 9 s of `git`, `dvc` and `harmonia` runs);
    each test gets a copy of its own from ``repo``."""
    tmp_path = tmp_path_factory.mktemp("pipeline-template")
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("params.yaml", "dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO_ROOT / name, root / name)
    shutil.copytree(REPO_ROOT / "notebooks", root / "notebooks")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["pipeline"]["models"] = ["tiny-musicgen"]
    params["prompt_sets"]["eval"]["limit"] = 3
    params["evaluate"]["clap_model"] = "tiny-clap"
    params["music"]["duration_s"] = 1.0
    params["music"]["batch_size"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run("git", "init", "-q", cwd=root)
    run("dvc", "init", "-q", cwd=root)
    run("dvc", "remote", "add", "-d", "local", str(tmp_path / "storage"), cwd=root)
    shutil.copytree(tiny_models / "tiny-musicgen", root / "models" / "tiny-musicgen")
    run("harmonia", "models", "tiny", "clap", cwd=root)  # records snapshots.lock and runs dvc add models
    out = run("harmonia", "datasets", "build", "eval-prompts", cwd=root).stdout
    assert "dvc add datasets: datasets.dvc updated" in out
    run(*GIT, "add", "-A", cwd=root)
    run(*GIT, "commit", "-qm", "workbench", cwd=root)
    return root


@pytest.fixture
def repo(tmp_path, repo_template):
    """A copy of the template: the same commit, its own DVC remote (in .dvc/config.local, untracked)."""
    root = tmp_path / "repo"
    shutil.copytree(repo_template, root, symlinks=True)
    run("dvc", "remote", "modify", "--local", "local", "url", str(tmp_path / "storage"), cwd=root)
    return root


@pytest.mark.slow
def test_repro_reruns_only_what_changed_and_experiments_sweep(repo):
    # 1. Every stage runs once.
    first = run("dvc", "repro", cwd=repo).stdout
    assert stages_run(first) == [
        "evaluate@eval-tiny-musicgen",
        "generate@eval-tiny-musicgen",
        "report",
        "verify",
    ]
    metrics = json.loads((repo / "metrics/eval-tiny-musicgen.json").read_text())
    assert (
        metrics["takes"] == 3
        and -70 < metrics["mean_loudness_lufs"] < 0
        and -1 <= metrics["mean_clap_score"] <= 1
    )
    rows = json.loads((repo / "plots/eval-tiny-musicgen.json").read_text())
    assert [r["prompt"] for r in rows] == ["p000", "p001", "p002"]
    assert {"true_peak_dbtp", "clipping_ratio", "silence_ratio", "spectral_centroid_hz", "clap_score"} <= set(
        rows[0]
    )
    index = json.loads((repo / "generated/eval-tiny-musicgen/index.json").read_text())
    artifacts = [t["artifact"] for t in index["takes"]]
    assert artifacts[0] == artifacts[1] != artifacts[2]  # batches of 2 prompts: 2 + 1
    assert json.loads((repo / "reports/verify.json").read_text())["ok"] is True
    assert "<audio" in (repo / "reports/report.html").read_text()

    # 2. A second repro changes nothing.
    second = run("dvc", "repro", cwd=repo).stdout
    assert stages_run(second) == [] and "Data and pipelines are up to date." in second

    # 3. An evaluation parameter re-runs evaluation only (its metrics did not move, so the report stays).
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["evaluate"]["silence_threshold_dbfs"] = -50
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = run("dvc", "repro", cwd=repo).stdout
    assert stages_run(third) == ["evaluate@eval-tiny-musicgen"]

    # 4. An experiment with another guidance scale gives another metrics row.
    run(*GIT, "add", "-A", cwd=repo)
    run(*GIT, "commit", "-qm", "baseline", cwd=repo)
    run("dvc", "exp", "run", "-S", "music.guidance_scale=5", cwd=repo)
    shown = json.loads(run("dvc", "exp", "show", "--json", cwd=repo).stdout)
    rows = {}
    for entry in shown:
        for exp in [entry] + [r for e in entry.get("experiments") or [] for r in e.get("revs", [])]:
            data = exp.get("data") or {}
            guidance = data["params"]["params.yaml"]["data"]["music"]["guidance_scale"]
            rows[guidance] = data["metrics"]["metrics/eval-tiny-musicgen.json"]["data"]
    assert set(rows) == {3.0, 5}
    assert rows[3.0] != rows[5]


@pytest.mark.slow
def test_push_delete_pull_restores_verified_snapshots(repo):
    run("dvc", "push", "-q", cwd=repo)
    shutil.rmtree(repo / "models")
    run("dvc", "pull", "-q", "models.dvc", cwd=repo)
    out = run("harmonia", "models", "verify", "--full", cwd=repo).stdout
    assert out.splitlines() == [
        "model tiny-clap: ok (5 files, 5 hashed, 0 unchanged, full)",
        "model tiny-musicgen: ok (6 files, 6 hashed, 0 unchanged, full)",
    ]
    assert run("harmonia", "check", cwd=repo).stdout.startswith("ok: ")


def test_check_catches_unpinned_revisions_disagreeing_records_and_bad_inventories(repo):
    wb = Workbench.open(repo)
    assert check(wb) == []
    # an unpinned revision
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["models"]["musicgen-small"]["revision"] = "main"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    problems = check(Workbench.open(repo))
    assert problems == [
        "params.yaml: models.musicgen-small.revision is 'main', not a 40-hex commit. Pin it: "
        "'harmonia models fetch musicgen-small' prints the commit it resolved to."
    ]
    proc = run("harmonia", "check", cwd=repo, ok=False)
    assert proc.returncode == 1 and proc.stdout.startswith(
        "FAIL: params.yaml: models.musicgen-small.revision is 'main'"
    )
    run("git", "checkout", "params.yaml", cwd=repo)

    # a record that disagrees with models.dvc (a snapshot added without dvc add)
    shutil.copytree(repo / "models" / "tiny-musicgen", repo / "models" / "tiny-musicgen-copy")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["models"]["tiny-musicgen-copy"] = {"builder": "musicgen", "seed": 0}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_record(Workbench.open(repo))
    (problem,) = check(Workbench.open(repo))
    assert (
        problem.startswith("models.dvc counts 13 files, ") and "snapshots.lock counts 20 files, " in problem
    )
    assert problem.endswith("Run 'harmonia lock' and 'dvc add models', then commit both.")
    run("git", "checkout", "params.yaml", "snapshots.lock", cwd=repo)
    shutil.rmtree(repo / "models" / "tiny-musicgen-copy")

    # a malformed inventory in the record
    record = json.loads((repo / "snapshots.lock").read_text())
    record["models"]["tiny-clap"]["inventory"]["files"][0]["path"] = "../escape"
    (repo / "snapshots.lock").write_text(json.dumps(record))
    (problem,) = check(Workbench.open(repo))
    assert problem.startswith(
        "snapshots.lock: models.tiny-clap: files[0].path '../escape' leaves the snapshot folder"
    )
    (repo / "snapshots.lock").unlink()
    assert check(Workbench.open(repo)) == [
        "snapshots.lock is missing: run 'harmonia lock' (fetching or building a snapshot writes it too)."
    ]


def test_the_project_itself_passes_its_check():
    """What CI checks on a clean clone, without any snapshot data."""
    assert check(Workbench.open(REPO_ROOT)) == []


@pytest.mark.parametrize("size", [0, 2.5, "4", True])
def test_a_bad_batch_size_is_refused_before_any_work(tmp_path, size):
    from harmonia.errors import ParamsError
    from harmonia.pipeline import stage_generate

    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["music"]["batch_size"] = size
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "generated"
    with pytest.raises(
        ParamsError, match=rf"music.batch_size must be a whole number >= 1 .*got {size!r:s}\."
    ):
        stage_generate(Workbench.open(tmp_path), "eval", "musicgen-small", out)
    assert not out.exists()
