"""The README's hub commands ("Fetch a model"), run exactly as written in a shell, against a hub on
127.0.0.1 that serves every repo params.yaml names at its pinned revision (tiny files)."""

import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.hubserver import FakeHub, serve_params
from tests.readme import section_blocks

BIN = os.path.dirname(sys.executable)
TOKEN = "hf_readmeTESTtoken0123456789abcdef"


def shell_env(hub_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "HARMONIA_"))}
    return {
        **env, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(REPO_ROOT),
        "HF_ENDPOINT": hub_url, "HF_HUB_DISABLE_TELEMETRY": "1", "DVC_NO_ANALYTICS": "1", **extra,
    }  # fmt: skip


def run_line(line: str, cwd, env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def printed_pattern(block_text: str) -> re.Pattern:
    """A README output block as a pattern: each <placeholder> stands for any text."""
    parts = re.split(r"<[^<>]+>", block_text.strip())
    return re.compile("[^\n]+".join(re.escape(part) for part in parts))


@pytest.mark.slow
def test_the_readme_fetch_commands_run_as_written(tmp_path):
    commands = [line for b in section_blocks("Fetch a model", "bash") for line in b.lines()]
    assert commands and all(line.startswith("harmonia ") for line in commands), commands
    printed, errors = [b for b in section_blocks("Fetch a model", "") if b.lines()][:2]
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    wb = tmp_path / "wb"
    wb.mkdir()
    shutil.copy(REPO_ROOT / "params.yaml", wb)
    for args in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        assert subprocess.run(args, cwd=wb, env=shell_env(""), capture_output=True).returncode == 0

    with FakeHub() as hub:
        serve_params(hub, params, gated={"facebook/musicgen-small"}, token=TOKEN)
        # 1. No token: the gated model is refused in one line, the README's, and nothing is left.
        first = run_line(commands[0], wb, shell_env(hub.url))
        (gated_line,) = [e for e in errors.lines() if "is gated and no token was sent" in e]
        assert first.returncode == 2 and first.stdout == ""
        assert first.stderr == gated_line.replace("https://huggingface.co", hub.url) + "\n"
        assert not (wb / "models").exists() or not any((wb / "models").iterdir())

        # 2. With the token in the environment: every command, in order, as written.
        outputs, printed_block_checked = [], False
        for line in commands:
            proc = run_line(line, wb, shell_env(hub.url, HF_TOKEN=TOKEN))
            assert proc.returncode == 0, f"{line}\n{proc.stdout}{proc.stderr}"
            outputs.append(proc.stdout + proc.stderr)
            if not printed_block_checked:  # the first command prints what the README says
                assert printed_pattern(printed.text).fullmatch(proc.stdout.strip()), proc.stdout
                printed_block_checked = True
        assert "musicgen-small" in os.listdir(wb / "models")
        sent = {h.get("authorization") for _, path, h in hub.requests if "musicgen-small" in path}
        assert f"Bearer {TOKEN}" in sent

    # 3. The token went to the hub and nowhere else.
    assert all(TOKEN not in out for out in outputs) and TOKEN not in first.stdout + first.stderr
    for path in wb.rglob("*"):
        if path.is_file() and ".git/objects" not in str(path):
            assert TOKEN.encode() not in path.read_bytes(), path
