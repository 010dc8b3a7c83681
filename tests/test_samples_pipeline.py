"""The samples stage under DVC: a temporary git + DVC repository from the project's files, the tiny model."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO_ROOT

BIN = os.path.dirname(sys.executable)
GIT = ["git", "-c", "user.email=ci@harmonia", "-c", "user.name=ci"]
STAGE = "samples@tiny-stable-audio"


def run(*args, cwd):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "HARMONIA_ROOT": str(cwd)}
    proc = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{args}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    return proc.stdout


@pytest.mark.slow
def test_the_samples_stage_runs_under_dvc_and_sweeps_the_tempo(tmp_path, tiny_stable_audio):
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("params.yaml", "dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO_ROOT / name, root / name)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["pipeline"].update(models=[], prompt_sets=[], sample_models=["tiny-stable-audio"])
    params["evaluate"]["clap_model"] = None
    params["samples"].update(
        model="tiny-stable-audio", bpm=150.0, bars=1, steps=2, prompts=["funk drums", "bass"]
    )
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(tiny_stable_audio / "tiny-stable-audio", root / "models" / "tiny-stable-audio")
    run("git", "init", "-q", cwd=root)
    run("dvc", "init", "-q", cwd=root)
    run("harmonia", "lock", cwd=root)
    run(*GIT, "add", "-A", cwd=root)
    run(*GIT, "commit", "-qm", "workbench", cwd=root)

    out = run("dvc", "repro", STAGE, cwd=root)
    assert "Running stage 'verify'" in out and f"Running stage '{STAGE}'" in out
    pack = json.loads((root / "packs/tiny-stable-audio/pack.json").read_text())
    assert [t["file"] for t in pack["takes"]] == ["loops/001-s0-t0.wav", "loops/002-s0-t0.wav"]
    assert {t["loop"]["bpm"] for t in pack["takes"]} == {150.0}
    assert "Running stage" not in run("dvc", "repro", STAGE, cwd=root)  # nothing changed

    run(*GIT, "add", "-A", cwd=root)
    run(*GIT, "commit", "-qm", "baseline", cwd=root)
    run("dvc", "exp", "run", "-S", "samples.bpm=200", STAGE, cwd=root)
    pack = json.loads((root / "packs/tiny-stable-audio/pack.json").read_text())
    assert {t["loop"]["bpm"] for t in pack["takes"]} == {200.0}
    assert all(t["loop"]["length_samples"] == 52_920 for t in pack["takes"])  # 1 bar at 200 bpm
