"""README command sequences on tiny models, run exactly as written in a shell in a fresh workbench."""

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.readme import section_blocks
from tests.test_readme_hub import printed_pattern

BIN = os.path.dirname(sys.executable)


@pytest.mark.slow
def test_the_readme_mbd_sequence_on_tiny_models_runs_as_written(tmp_path):
    heading = "Multi-Band Diffusion: another decoder for MAGNeT's tokens"
    (commands,) = [b for b in section_blocks(heading, "bash") if "tiny" in b.text]
    printed = next(b for b in section_blocks(heading, "") if "generated: artifact" in b.text)
    wb = tmp_path / "wb"
    wb.mkdir()
    shutil.copy(REPO_ROOT / "params.yaml", wb)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env |= {"PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    out = []
    for line in commands.lines():
        proc = subprocess.run(
            ["bash", "-c", line], cwd=wb, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, f"{line}\n{proc.stdout}{proc.stderr}"
        if not line.startswith("harmonia models tiny"):
            out.append(proc.stdout.strip())
    assert printed_pattern(printed.text).fullmatch("\n".join(out)), "\n".join(out)
