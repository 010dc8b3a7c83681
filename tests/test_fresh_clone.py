"""A fresh clone, nothing fetched or built: `dvc repro` says what to run instead of DVC's 'missing data'."""

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

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
