"""Containers without a Docker engine: the compose files through a real compose implementation
(Debian's docker-compose, `config`), and the scripts the image runs, on the host."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT, jupyter_lab

COMPOSE = shutil.which("docker-compose")
if COMPOSE is None and not os.environ.get("CI"):
    pytestmark = pytest.mark.skip(
        reason="docker-compose not installed (make setup installs Debian's package)"
    )

DATA_MOUNTS = {
    "/workbench",
    "/workbench/notebooks",
    "/workbench/models",
    "/workbench/datasets",
    "/workbench/artifacts",
    "/home/harmonia/.cache/huggingface",
    "/workbench/.dvc/cache",
}


def compose_config(tmp_path: Path, *files: str) -> dict:
    """`docker-compose -f ... config` in a copy of the project with an .env, parsed."""
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    for name in ("docker-compose.yml", "docker-compose.nvidia.yml"):
        shutil.copy(REPO_ROOT / name, project / name)
    (project / ".env").write_text("JUPYTER_TOKEN=test-token\n")
    args = [COMPOSE or "docker-compose"]
    for f in files:
        args += ["-f", f]
    proc = subprocess.run([*args, "config"], cwd=project, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def test_cpu_compose_file(tmp_path):
    config = compose_config(tmp_path, "docker-compose.yml")
    services = config["services"]
    assert set(services) == {"lab", "pipeline", "fetch", "ray-head"}
    lab = services["lab"]
    assert lab["ports"] == ["127.0.0.1:8888:8888/tcp"]  # loopback only by default
    assert lab["restart"] == "unless-stopped"
    assert lab["healthcheck"]["test"] == ["CMD", "harmonia-healthcheck"]
    assert (lab["mem_limit"], lab["cpus"]) == ("16g", 2.0)
    assert lab["environment"]["HF_HUB_OFFLINE"] == "1" and lab["command"] == ["lab"]
    for name, service in services.items():
        targets = {v.split(":")[1] for v in service["volumes"]}
        assert targets == DATA_MOUNTS, name
        assert "deploy" not in service  # no GPU reservation in the CPU file
    assert services["pipeline"]["profiles"] == ["pipeline"] and services["pipeline"]["command"] == [
        "pipeline"
    ]
    assert (
        services["fetch"]["profiles"] == ["fetch"]
        and services["fetch"]["environment"]["HF_HUB_OFFLINE"] == "0"
    )
    assert "profiles" not in lab
    assert set(config["volumes"]) == {"hf-cache", "dvc-cache"}
    head = services["ray-head"]  # optional (a profile): a Ray head with token auth, on loopback
    assert head["profiles"] == ["ray"] and head["entrypoint"] == ["tini", "--", "ray"]
    assert head["command"][:4] == ["start", "--head", "--block", "--port=6379"]
    assert head["environment"]["RAY_AUTH_MODE"] == "token" and head["ports"] == ["127.0.0.1:6379:6379/tcp"]


def test_settings_come_from_env(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / ".env").write_text(
        "JUPYTER_TOKEN=x\nHARMONIA_PORT=9999\nHARMONIA_MEMORY=4g\nHARMONIA_CPUS=1.5\n"
    )
    shutil.copy(REPO_ROOT / "docker-compose.yml", project)
    proc = subprocess.run(
        [COMPOSE or "docker-compose", "config"], cwd=project, capture_output=True, text=True
    )
    lab = yaml.safe_load(proc.stdout)["services"]["lab"]
    assert lab["ports"] == ["127.0.0.1:9999:8888/tcp"] and (lab["mem_limit"], lab["cpus"]) == ("4g", 1.5)


def test_gpu_override_adds_only_the_gpu(tmp_path):
    cpu = compose_config(tmp_path, "docker-compose.yml")["services"]
    gpu = compose_config(tmp_path, "docker-compose.yml", "docker-compose.nvidia.yml")["services"]
    for name in ("lab", "pipeline"):
        (device,) = gpu[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device == {"driver": "nvidia", "count": "1", "capabilities": ["gpu"]}
        assert gpu[name]["build"]["args"] == {"TORCH_VARIANT": "cu128"}
        rest = {k: v for k, v in gpu[name].items() if k not in ("deploy", "build", "volumes")}
        assert rest == {k: v for k, v in cpu[name].items() if k not in ("build", "volumes")}
        assert sorted(gpu[name]["volumes"]) == sorted(cpu[name]["volumes"])
    assert "deploy" not in gpu["fetch"]
    override = yaml.safe_load((REPO_ROOT / "docker-compose.nvidia.yml").read_text())
    assert set(override["services"]) == {"lab", "pipeline"}


def _entrypoint(tmp_path, *args, env=None):
    """Run docker/entrypoint.sh with stub `jupyter`/`dvc` commands that print their arguments."""
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    for name in ("jupyter", "dvc"):
        (stubs / name).write_text(
            f'#!/bin/sh\necho "{name} $*"\necho "token-in-env=${{JUPYTER_TOKEN:+yes}}"\n'
        )
        (stubs / name).chmod(0o755)
    base = {"PATH": f"{stubs}:/usr/bin:/bin", "HARMONIA_ROOT": "/workbench", **(env or {})}
    return subprocess.run(
        ["sh", str(REPO_ROOT / "docker/entrypoint.sh"), *args], env=base, capture_output=True, text=True
    )


def test_entrypoint_refuses_to_start_without_a_token(tmp_path):
    proc = _entrypoint(tmp_path, "lab")
    assert proc.returncode == 64 and proc.stdout == ""
    assert proc.stderr == (
        "error: set JUPYTER_TOKEN (or JUPYTER_PASSWORD_HASH) in .env: JupyterLab will not start without authentication.\n"
    )
    example = _entrypoint(tmp_path, env={"JUPYTER_TOKEN": "replace-with-a-long-random-token"})
    assert example.returncode == 64 and "still the example value" in example.stderr


def test_entrypoint_starts_jupyterlab_with_the_token_in_the_environment_only(tmp_path):
    secret = "s3cr3t-token-value"
    proc = _entrypoint(tmp_path, "lab", env={"JUPYTER_TOKEN": secret})
    assert proc.returncode == 0, proc.stderr
    line, token = proc.stdout.splitlines()
    assert (
        line
        == "jupyter lab --ip=0.0.0.0 --port=8888 --no-browser --ServerApp.root_dir=/workbench --LabApp.news_url="
    )
    assert token == "token-in-env=yes" and secret not in proc.stdout + proc.stderr
    hashed = _entrypoint(tmp_path, env={"JUPYTER_PASSWORD_HASH": "argon2:abc"})
    assert "--PasswordIdentityProvider.hashed_password=argon2:abc" in hashed.stdout
    pipeline = _entrypoint(tmp_path, "pipeline", "--force")
    assert pipeline.stdout.splitlines()[0] == "dvc repro --force"


def test_healthcheck_against_a_real_jupyterlab(tmp_path):
    script = [sys.executable, str(REPO_ROOT / "docker/healthcheck.py")]
    (tmp_path / "root").mkdir()
    with jupyter_lab(tmp_path / "root", tmp_path / "home") as (_, _, port):
        up = subprocess.run(
            script, env={**os.environ, "JUPYTER_PORT": str(port)}, capture_output=True, text=True
        )
        assert up.returncode == 0, up.stderr
    down = subprocess.run(
        script, env={**os.environ, "JUPYTER_PORT": str(port)}, capture_output=True, text=True
    )
    assert down.returncode == 1 and down.stderr.startswith(f"unhealthy: http://127.0.0.1:{port}/api: ")


def test_dockerfile_copies_what_exists_and_installs_from_the_lock():
    text = (REPO_ROOT / "Dockerfile").read_text()
    copies = re.findall(r"^COPY\s+(.+?)\s+\S+$", text, flags=re.M)
    sources = [src for line in copies for src in line.split()]
    assert sources and all((REPO_ROOT / src).exists() for src in sources), sources
    assert "pip install -r /opt/harmonia/requirements.lock" in text
    assert (
        re.search(r"^FROM \$\{BASE_IMAGE\}$", text, flags=re.M)
        and "ARG BASE_IMAGE=python:3.11.7-slim-bookworm" in text
    )
    assert "USER harmonia" in text and "--uid 1000" in text and "HF_HUB_OFFLINE=1" in text
    assert re.search(r"^HEALTHCHECK .*harmonia-healthcheck", text, flags=re.M)
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    for path in ("models", "datasets", "artifacts", ".venv", ".git", ".env"):
        assert path in ignored
    assert not any(src in ignored for src in sources)
