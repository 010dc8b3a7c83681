"""The notebooks: committed without outputs, parameterised, and running unattended under papermill."""

import json
import shutil
import subprocess

import nbformat
import pytest
import yaml

from harmonia.artifacts import list_artifacts
from harmonia.hashing import sha256_file
from harmonia.notebooks import NotebookError, outputs_of, run_notebooks
from harmonia.workbench import Workbench
from tests.conftest import REPO_ROOT

NOTEBOOKS = ["00_models.ipynb", "01_music_studio.ipynb", "02_compare.ipynb", "report.ipynb"]


def test_committed_notebooks_have_no_outputs():
    tracked = subprocess.run(
        ["git", "ls-files", "*.ipynb"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    paths = tracked.stdout.split() or [f"notebooks/{n}" for n in NOTEBOOKS]  # untracked in a fresh worktree
    assert sorted(p.split("/")[-1] for p in paths) == NOTEBOOKS
    for path in paths:
        assert outputs_of(REPO_ROOT / path) == [], (
            f"{path} has outputs: strip them (make hooks installs nbstripout)"
        )


def test_outputs_of_finds_outputs(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("1"), nbformat.v4.new_code_cell("2", execution_count=3)]
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", text="x")]
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    assert outputs_of(path) == [0, 1]


def test_each_notebook_has_one_parameters_cell_for_a_real_model():
    tiny = yaml.safe_load((REPO_ROOT / "notebooks/tiny-params.yaml").read_text())
    assert sorted(tiny) == NOTEBOOKS
    for name in NOTEBOOKS:
        nb = nbformat.read(REPO_ROOT / "notebooks" / name, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, name
        assert nb.metadata.kernelspec.name == "harmonia"
        namespace = {}
        exec(tagged[0].source, namespace)
        if "model" in namespace:
            assert namespace["model"] == "musicgen-small"  # the defaults work with a real model
        assert set(tiny[name]) <= set(namespace), (
            f"{name}: tiny-params.yaml names a parameter the notebook lacks"
        )


@pytest.fixture
def nb_workbench(tmp_path, tiny_models):
    root = tmp_path / "wb"
    root.mkdir()
    shutil.copy(REPO_ROOT / "params.yaml", root)
    shutil.copytree(REPO_ROOT / "notebooks", root / "notebooks")
    shutil.copytree(tiny_models, root / "models", ignore=shutil.ignore_patterns("tiny-musicgen-stereo"))
    return Workbench.open(root)


@pytest.mark.slow
def test_papermill_runs_every_notebook_and_they_make_valid_artifacts(nb_workbench, tmp_path):
    out = tmp_path / "executed"
    said = []
    runs = run_notebooks(nb_workbench, out, tiny=True, timeout_s=300, say=said.append)
    assert "built tiny model tiny-musicgen-stereo" in said  # the missing one was built
    assert [r.output.name for r in runs] == NOTEBOOKS
    for run in runs:
        nb = json.loads(run.output.read_text())
        assert not [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert any("injected-parameters" in c["metadata"].get("tags", []) for c in nb["cells"])
    studio = json.loads((out / "01_music_studio.ipynb").read_text())
    printed = "".join("".join(o.get("text", "")) for c in studio["cells"] for o in c.get("outputs", []))
    assert ": identical (1 outputs, same sha256)" in printed
    arts = list_artifacts(nb_workbench)
    assert len(arts) == 2 + 2 * 2 * 2  # studio: 2 seeds; compare: 2 prompts x 2 seeds x 2 guidance scales
    for art in arts:
        m = art.manifest.to_json()
        assert m["schema"] == "harmonia.manifest/2" and m["model"]["name"] == "tiny-musicgen"
        assert all(sha256_file(art.path / path) == digest for path, digest in m["files"].items())
    assert not (nb_workbench.root / "notebooks" / "outputs").exists()


def test_a_failing_notebook_stops_the_run(nb_workbench, tmp_path):
    bad = nbformat.v4.new_notebook()
    bad.metadata["kernelspec"] = {"name": "harmonia", "display_name": "Harmonia", "language": "python"}
    bad.cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise KeyError('nope')")]
    nbformat.write(bad, nb_workbench.root / "notebooks" / "99_bad.ipynb")
    with pytest.raises(NotebookError) as exc:
        run_notebooks(
            nb_workbench, tmp_path / "out", names=["99_bad.ipynb"], timeout_s=60, say=lambda _: None
        )
    assert str(exc.value) == (
        f"notebooks/99_bad.ipynb failed in cell 2 (KeyError: 'nope'); the executed copy with the traceback is "
        f"{tmp_path / 'out' / '99_bad.ipynb'}."
    )
    with pytest.raises(NotebookError, match=r"No notebook 98_none.ipynb in .*Known: 00_models.ipynb"):
        run_notebooks(nb_workbench, tmp_path / "out", names=["98_none.ipynb"])
