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
from tests.hubserver import FakeHub, serve_params
from tests.readme import commands_starting, words

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


# What each service the README starts runs, and which test runs that on the host (no Docker
# engine here): the image's ENTRYPOINT is docker/entrypoint.sh (as harmonia-entrypoint) under tini.
SERVICE_RUNS = {
    "lab": (["lab"], "test_entrypoint_starts_jupyterlab_with_the_token_in_the_environment_only"),
    "fetch": (["fetch"], "test_the_fetch_service_command_runs_on_the_host"),
    "pipeline": (["pipeline"], "tests/test_fresh_clone.py runs dvc repro in a fresh clone"),
    "ray-head": (None, "test_the_ray_head_command_is_one_ray_accepts"),
}


def _readme_compose_commands() -> list[tuple[str, list[str], list[str], str, list[str], list[str]]]:
    """Each `docker compose ...` the README shows: (as written, files, profiles, subcommand, options, services)."""
    parsed = []
    for command in commands_starting("docker compose"):
        argv, files, profiles = words(command)[2:], [], []
        while argv and argv[0] in ("-f", "--file", "--profile"):
            (files if argv[0] in ("-f", "--file") else profiles).append(argv[1])
            argv = argv[2:]
        assert argv and not argv[0].startswith("-"), f"{command}: an option compose has not been checked for"
        sub, rest = argv[0], argv[1:]
        options = [a for a in rest if a.startswith("-")]
        parsed.append((command, files, profiles, sub, options, [a for a in rest if not a.startswith("-")]))
    return parsed


def test_every_docker_compose_command_in_the_readme_names_what_the_files_hold(tmp_path):
    """Each command as written: its files parse (merged, by compose itself), its subcommand and
    options are compose's, the services it names exist and their profiles are the ones it enables."""
    commands = _readme_compose_commands()
    assert {sub for *_, sub, _, _ in commands} >= {"up", "run"} and len(commands) >= 5
    helps: dict[str, str] = {}
    configs: dict[tuple[str, ...], dict] = {}
    for command, files, profiles, sub, options, services in commands:
        assert all((REPO_ROOT / f).is_file() for f in files), command
        key = tuple(files or ["docker-compose.yml"])
        if key not in configs:
            configs[key] = compose_config(tmp_path, *key)["services"]
        config = configs[key]
        if sub not in helps:
            proc = subprocess.run(
                [COMPOSE or "docker-compose", sub, "--help"], capture_output=True, text=True
            )
            assert proc.returncode == 0, f"{command}: compose has no '{sub}' command"
            helps[sub] = proc.stdout
        for option in options:
            assert re.search(rf"(^|[\s,]){re.escape(option)}\b", helps[sub]), f"{command}: {option}?"
        named = services or [name for name, s in config.items() if not s.get("profiles")]
        for name in named:
            assert name in config, f"{command}: no service {name!r}"
            assert set(config[name].get("profiles", [])) <= set(profiles), (
                f"{command}: {name} needs its profile"
            )
            expected, _ = SERVICE_RUNS[name]  # a service the README starts has a host check below
            if expected is not None:
                assert config[name]["command"] == expected, command


@pytest.mark.slow
def test_the_fetch_service_command_runs_on_the_host(tmp_path):
    """`docker compose --profile fetch run --rm fetch` runs `harmonia-entrypoint fetch` with the
    service's environment: here the same script, on the host, against a hub on 127.0.0.1 that
    serves every repo params.yaml names, in a workbench holding params.yaml."""
    ((_, files, _, _, _, _),) = [c for c in _readme_compose_commands() if c[5] == ["fetch"]]
    service = compose_config(tmp_path, *(files or ["docker-compose.yml"]))["services"]["fetch"]
    wb = tmp_path / "wb"
    wb.mkdir()
    shutil.copy(REPO_ROOT / "params.yaml", wb)
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "HARMONIA_"))}
    env.update(service["environment"])
    with FakeHub() as hub:
        serve_params(hub, params)
        env.update(
            HARMONIA_ROOT=str(wb), HF_ENDPOINT=hub.url, PYTHONPATH=str(REPO_ROOT),
            PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        )  # fmt: skip
        proc = subprocess.run(
            ["sh", str(REPO_ROOT / "docker/entrypoint.sh"), *service["command"]],
            cwd=wb, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    hub_models = [n for n, s in params["models"].items() if s.get("repo")]
    hub_datasets = [n for n, s in params["datasets"].items() if s.get("repo")]
    out = proc.stdout.splitlines()
    for kind, names in (("model", hub_models), ("dataset", hub_datasets)):
        for name in names:
            assert any(line.startswith(f"fetched: {kind} {name} = ") for line in out), (name, proc.stdout)
            assert f"{kind} {name}: ok (" in proc.stdout and ", full)" in proc.stdout
    # params.yaml's allow_pickle: true is consent: audiocraft's pickled checkpoints come too, not a README alone
    for name, spec in params["models"].items():
        if spec.get("repo") and spec.get("allow_pickle"):
            (line,) = [line for line in out if line.startswith(f"fetched: model {name} = ")]
            assert line.endswith("pickled weights taken (params.yaml's allow_pickle: true): " + ", ".join(
                sorted(p for p in spec["allow_patterns"] if p.endswith((".bin", ".th")))
            )), line  # fmt: skip
            files = sorted(p.name for p in (wb / "models" / name).iterdir())
            assert files == sorted([*spec["allow_patterns"], "inventory.json"]), (name, files)
    assert service["environment"]["HF_HUB_OFFLINE"] == "0"  # the one service that may reach the hub


@pytest.mark.slow
def test_the_ray_head_command_is_one_ray_accepts(tmp_path):
    """`docker compose --profile ray up -d ray-head` runs `ray start --head --block ...`: every
    option it passes is one the installed `ray start` takes (a real head is started by the Ray
    tests in tests/test_batch.py; one on port 6379 here would collide with them)."""
    service = compose_config(tmp_path, "docker-compose.yml")["services"]["ray-head"]
    assert service["entrypoint"] == ["tini", "--", "ray"] and service["command"][0] == "start"
    ray = Path(sys.executable).parent / "ray"
    if not ray.exists():
        pytest.skip("ray is not installed (pip install 'harmonia[ray]')")
    proc = subprocess.run([str(ray), "start", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for option in service["command"][1:]:
        assert re.search(rf"\s{re.escape(option.split('=')[0])}\b", proc.stdout), option
