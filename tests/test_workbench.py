from pathlib import Path

import pytest

from harmonia.errors import ParamsError, UnknownSnapshotError, WorkbenchNotFoundError
from harmonia.workbench import Workbench, find_root, load_params


def test_root_is_found_from_a_subfolder(workbench, monkeypatch):
    monkeypatch.chdir(workbench.root / "notebooks")
    assert find_root() == workbench.root
    wb = Workbench.open()
    assert wb.snapshot_dir("model", "toy") == workbench.root / "models" / "toy"
    assert wb.kind_dir("dataset") == workbench.root / "datasets"
    assert wb.artifacts_dir == workbench.root / "artifacts"


def test_harmonia_root_wins_over_the_working_directory(workbench, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("HARMONIA_ROOT", str(workbench.root))
    assert find_root() == workbench.root


def test_harmonia_root_without_params_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HARMONIA_ROOT", str(tmp_path))
    with pytest.raises(WorkbenchNotFoundError) as exc:
        find_root()
    assert str(exc.value) == (
        f"HARMONIA_ROOT={tmp_path} has no params.yaml. Point HARMONIA_ROOT at a workbench "
        "(a folder with params.yaml) or unset it."
    )


def test_no_workbench_anywhere_up(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WorkbenchNotFoundError, match=r"No Harmonia workbench found: no params.yaml in "):
        find_root()


def test_unknown_name_lists_the_known_ones(workbench):
    with pytest.raises(UnknownSnapshotError) as exc:
        workbench.spec("model", "toyy")
    assert str(exc.value) == (
        "Unknown model 'toyy'. Known models: broken, corrupt, gated, ghost, private, tiny-musicgen, tiny-musicgen-melody, tiny-musicgen-stereo, toy. "
        f"Add it under 'models:' in {workbench.root / 'params.yaml'} or pick one of those."
    )


def test_spec_fields(workbench):
    spec = workbench.spec("model", "toy")
    assert (spec.repo, spec.revision, spec.license, spec.synthetic) == ("acme/toy", "main", "mit", False)
    tiny = workbench.spec("model", "tiny-musicgen")
    assert (tiny.builder, tiny.seed, tiny.synthetic) == ("musicgen", 0, True)


@pytest.mark.parametrize(
    "entry, message",
    [
        ("{repo: musicgen}", "params.yaml: models.m.repo must be 'owner/name', got 'musicgen'."),
        ("{repo: a/b, builder: musicgen}", "params.yaml: models.m needs exactly one of 'repo'"),
        ("{}", "params.yaml: models.m needs exactly one of 'repo'"),
        ("{repo: a/b, revison: main}", "params.yaml: models.m has unknown keys ['revison']"),
        (
            "{repo: a/b, revision: ''}",
            "params.yaml: models.m.revision must be a branch, tag or 40-hex commit",
        ),
        ("{builder: musicgen, seed: -1}", "params.yaml: models.m.seed must be an integer >= 0, got -1."),
        ("{repo: a/b, allow_patterns: [1]}", "params.yaml: models.m.allow_patterns must be a list of glob"),
        ("[1, 2]", "params.yaml: models.m must be a mapping, got list."),
    ],
)
def test_bad_params_entries(tmp_path: Path, entry, message):
    path = tmp_path / "params.yaml"
    path.write_text(f"models:\n  m: {entry}\n")
    with pytest.raises(ParamsError) as exc:
        load_params(path)
    assert str(exc.value).startswith(message)


def test_names_must_be_plain_folder_names(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text("models:\n  ../up: {repo: a/b}\n")
    with pytest.raises(ParamsError, match=r"model name must be 1-100 letters, digits.*got '\.\./up'"):
        load_params(path)


def test_invalid_yaml(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text("models: [\n")
    with pytest.raises(ParamsError, match="is not valid YAML"):
        load_params(path)
