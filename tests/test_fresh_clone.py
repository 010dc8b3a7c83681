"""A fresh clone, nothing fetched or built: `dvc repro` says what to run instead of DVC's 'missing data'."""

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.readme import commands_starting

BIN = os.path.dirname(sys.executable)
# What a clone holds: git-tracked files, no models/, datasets/, artifacts/ or DVC cache.
TRACKED = (
    "params.yaml",
    "dvc.yaml",
    "models.dvc",
    "datasets.dvc",
    "snapshots.lock",
    ".dvcignore",
    ".gitignore",
)


def _run(*args, cwd):
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PYTHONPATH": str(REPO_ROOT),
        "DVC_NO_ANALYTICS": "1",
    }
    env.pop("HARMONIA_ROOT", None)
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_repro_in_a_fresh_clone_stops_in_verify_with_what_to_run(tmp_path):
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in TRACKED:
        shutil.copy(REPO_ROOT / name, clone / name)
    shutil.copytree(REPO_ROOT / "notebooks", clone / "notebooks")
    assert _run("git", "init", "-q", cwd=clone).returncode == 0
    assert _run("dvc", "init", "-q", cwd=clone).returncode == 0

    proc = _run("dvc", "repro", cwd=clone)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "missing data" not in output and "models.dvc" not in output and "datasets.dvc" not in output
    assert "Running stage 'verify'" in output
    (error,) = [line for line in output.splitlines() if line.startswith("error: ")]
    assert "Run: harmonia models fetch musicgen-small" in error  # the first thing the pipeline needs
    assert not (clone / "reports" / "verify.json").exists()


@pytest.mark.slow
def test_the_readme_offline_recipe_runs_exactly_as_written(tmp_path):
    """The README's offline pipeline line, copied from the README and run in a fresh clone."""
    (recipe,) = commands_starting("harmonia models tiny musicgen && ")
    assert "dvc exp run" in recipe
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in (*TRACKED, ".dvc/config", ".dvc/.gitignore"):
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / name, clone / name)
    shutil.copytree(REPO_ROOT / "notebooks", clone / "notebooks")
    git = ["git", "-c", "user.email=ci@harmonia", "-c", "user.name=ci"]
    assert _run("git", "init", "-q", cwd=clone).returncode == 0
    assert _run(*git, "add", "-A", cwd=clone).returncode == 0
    assert _run(*git, "commit", "-qm", "clone", cwd=clone).returncode == 0
    proc = _run("bash", "-c", recipe, cwd=clone)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "Ran experiment(s)" in proc.stdout + proc.stderr
    shown = _run("dvc", "exp", "show", "--json", cwd=clone)
    assert shown.returncode == 0 and "tiny-clap" in shown.stdout
