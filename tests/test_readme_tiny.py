"""README command sequences on tiny models, run exactly as written in a shell in a fresh workbench.

A ```bash block in the README is a promise that a test runs it as written: ``RUN_BY`` names the
test for each, and a new bash block fails ``test_every_readme_bash_block_is_run_by_a_test`` until
a test runs it. Recipes that cannot run here (real weights from the hub, several machines, text
to fill in) are plain ``` blocks.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.readme import README, blocks, section_blocks
from tests.test_readme_hub import printed_pattern

BIN = os.path.dirname(sys.executable)

# The headings of the README's ```bash blocks, in order, and the test that runs each.
RUN_BY = {
    "Fetch a model": "tests/test_readme_hub.py::test_the_readme_fetch_commands_run_as_written",
    "Commands": "tests/test_readme_tiny.py::test_the_readme_sequences_on_tiny_models_run_as_written",
    "Write with a language model": "tests/test_readme_tiny.py::test_the_readme_sequences_on_tiny_models_run_as_written",
    "audiocraft's own models: AudioGen and MAGNeT (in a worker)": (
        "tests/test_readme_tiny.py::test_the_readme_sequences_on_tiny_models_run_as_written"
    ),
    "Multi-Band Diffusion: another decoder for MAGNeT's tokens": (
        "tests/test_readme_tiny.py::test_the_readme_sequences_on_tiny_models_run_as_written"
    ),
}

# Each tiny sequence: its heading and a line of what it prints, which picks the output block.
SEQUENCES = {
    "songs": ("Commands", "transcribed: transcript"),
    "lm": ("Write with a language model", "written: artifact"),
    "audiocraft": ("audiocraft's own models: AudioGen and MAGNeT (in a worker)", "generated: artifact"),
    "mbd": ("Multi-Band Diffusion: another decoder for MAGNeT's tokens", "generated: artifact"),
}


def test_every_readme_bash_block_is_run_by_a_test():
    headings = [b.heading for b in blocks(README) if b.lang == "bash"]
    assert headings == list(RUN_BY), (
        "every ```bash block of the README is run as written by a test named in RUN_BY (or is a plain "
        f"``` block if it cannot run here); the README's bash blocks are under {headings}"
    )
    for test in RUN_BY.values():
        path, name = test.split("::")
        assert re.search(rf"^def {name}\(", (REPO_ROOT / path).read_text(), re.M), test
    runs_tiny = {heading for heading, _ in SEQUENCES.values()}
    assert {h for h, t in RUN_BY.items() if t.endswith("tiny_models_run_as_written")} == runs_tiny


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SEQUENCES))
def test_the_readme_sequences_on_tiny_models_run_as_written(tmp_path, name):
    heading, marker = SEQUENCES[name]
    (commands,) = [b for b in section_blocks(heading, "bash") if "tiny" in b.text]
    printed = next(b for b in section_blocks(heading, "") if marker in b.text)
    wb = tmp_path / "wb"
    wb.mkdir()
    shutil.copy(REPO_ROOT / "params.yaml", wb)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env |= {"PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    out = []
    for line in commands.lines():
        proc = subprocess.run(
            ["bash", "-c", line],
            cwd=wb,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, f"{line}\n{proc.stdout}{proc.stderr}"
        if not line.startswith("harmonia models tiny") and proc.stdout.strip():
            out.append(proc.stdout.strip())
    assert printed_pattern(printed.text).fullmatch("\n".join(out)), "\n".join(out)
