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

NOTEBOOKS = [
    "00_models.ipynb", "01_music_studio.ipynb", "02_compare.ipynb", "03_songs.ipynb", "04_video.ipynb", "report.ipynb",
]  # fmt: skip
# each notebook's default model: the real one params.yaml names for its kind (section: key)
REAL_MODELS = {
    "01_music_studio.ipynb": {"model": ("music", "model")},
    "02_compare.ipynb": {"model": ("music", "model")},
    "03_songs.ipynb": {"model": ("songs", "model"), "stems_model": ("songs", "stems_model"),
                       "transcribe_model": ("songs", "transcribe_model")},
    "04_video.ipynb": {"model": ("video", "model"), "soundtrack_model": ("music", "model")},
}  # fmt: skip


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
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    assert sorted(tiny) == NOTEBOOKS
    for name in NOTEBOOKS:
        nb = nbformat.read(REPO_ROOT / "notebooks" / name, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, name
        assert nb.metadata.kernelspec.name == "harmonia"
        namespace = {}
        exec(tagged[0].source, namespace)
        for name_, (section, key) in REAL_MODELS.get(name, {}).items():  # the defaults work with real models
            assert namespace[name_] == params[section][key] and params[section][key] in params["models"], (
                name_
            )
        assert set(tiny[name]) <= set(namespace), (
            f"{name}: tiny-params.yaml names a parameter the notebook lacks"
        )


def printed(notebook) -> str:
    """Everything an executed notebook printed."""
    nb = json.loads(notebook.read_text())
    return "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))


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
    assert ": identical (1 output, same sha256)" in printed(out / "01_music_studio.ipynb")
    songs = printed(out / "03_songs.ipynb")  # the song view's buttons, then the same repaint in code
    assert (
        songs.count("Made artifact ") == 2
        and "Stems " in songs
        and "Transcript " in songs
        and "WER " in songs
    )
    repainted = songs.split("Made artifact ")[2].split()[0]
    assert f"found {repainted}" in songs and f"{repainted}: identical (1 output, same sha256)" in songs
    video = printed(out / "04_video.ipynb")
    assert video.count("Generated artifact ") == 2
    assert "take-0.mp4: 32x32, 16 frames at 8 fps, 2.00 s (the track: 2.00 s)" in video
    arts = list_artifacts(nb_workbench)
    models = {"music": "tiny-musicgen", "song": "tiny-ace-step", "stems": "tiny-demucs",
              "transcript": "tiny-whisper", "video": "tiny-wan"}  # fmt: skip
    # studio: 2 seeds; compare: 2 prompts x 2 seeds x 2 guidance scales; songs: a song, a repaint, stems, a
    # transcript; video: a clip, a soundtrack and its music video
    assert sorted(a.kind for a in arts) == sorted(["music"] * (2 + 8 + 1) + ["song"] * 2 + ["stems", "transcript"]
                                                  + ["video"] * 2)  # fmt: skip
    for art in arts:
        m = art.manifest.to_json()
        assert m["schema"] == "harmonia.manifest/2" and m["model"]["name"] == models[art.kind]
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
