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
    readme_ids, mapping, out = distinct_ids(printed.text), {}, []
    for line in commands.lines():
        line = this_machines_ids(line, mapping)
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
        mapping = dict(zip(readme_ids, distinct_ids("\n".join(out)), strict=False))
    printed_here = "\n".join(out)
    if all(mapping.get(i) == i for i in readme_ids):  # this CPU computes the README's bits: as written
        assert printed_pattern(printed.text).fullmatch(printed_here), printed_here
    else:  # another CPU's bits: the same lines, with this machine's ids, numbers and words
        assert structure_pattern(printed.text).fullmatch(printed_here), printed_here


ID = re.compile(r"\b[0-9a-f]{16}\b")


def distinct_ids(text: str) -> list[str]:
    """The artifact ids a block names, each once, in the order they first appear."""
    return list(dict.fromkeys(ID.findall(text)))


def this_machines_ids(line: str, mapping: dict[str, str]) -> str:
    """A README command with each README id (or id prefix of 4 or more) replaced by the id this
    machine made in its place.

    Outputs are the same bits only on a CPU like the README's. On another, float kernels round
    differently, so an output's bytes differ and the ids of what is made from it differ too
    (lineage names the parent's bytes). A tiny model's bytes can differ as well.
    """

    def swap(match: re.Match) -> str:
        token = match.group(0)
        for readme, here in mapping.items():
            if readme.startswith(token) and readme != here:
                return here
        return token

    return re.sub(r"(?<![-\w.])[0-9a-f]{4,16}(?![\w.])", swap, line)


def structure_pattern(block_text: str) -> re.Pattern:
    """A README output block as a pattern of its lines, with any id, number or quoted text in
    place of the README's (and <placeholders> as in printed_pattern)."""
    parts = re.split(r'<[^<>]+>|\b[0-9a-f]{16}\b|"[^"\n]*"|-?\d+(?:\.\d+)?', block_text.strip())
    return re.compile("[^\n]*?".join(re.escape(part) for part in parts))
