import time
from pathlib import Path

import pytest

from harmonia.errors import ParamsError, UnknownSnapshotError, WorkbenchNotFoundError
from harmonia.workbench import Workbench, check_section, find_root, load_params


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
        "Unknown model 'toyy'. Known models: broken, corrupt, gated, ghost, private, tiny-ace-step, tiny-demucs, tiny-musicgen, tiny-musicgen-melody, "
        "tiny-musicgen-stereo, tiny-stable-audio, tiny-whisper, toy. "
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
        (
            "[1, 2]",
            "params.yaml: models.m must be a mapping with 'repo' or 'builder', got a list ([1, 2]). "
            "Fix the entry in params.yaml.",
        ),
        (
            "{repo: a/b, engine: [1]}",
            "params.yaml: models.m.engine must be an engine name such as 'musicgen', got a list ([1]). "
            "Fix the entry in params.yaml.",
        ),
        (
            "{repo: a/b, license: [mit, apache-2.0]}",
            "params.yaml: models.m.license must be a license id such as 'mit' or 'cc-by-nc-4.0', "
            "got a list (['mit', 'apache-2.0']). Fix the entry in params.yaml.",
        ),
        (
            "{repo: a/b, description: {a: 1}}",
            "params.yaml: models.m.description must be one line of text, got a mapping ({'a': 1}). "
            "Fix the entry in params.yaml.",
        ),
        (
            "{builder: 7}",
            "params.yaml: models.m.builder must be a tiny builder name such as 'musicgen', got a number (7). "
            "Fix the entry in params.yaml.",
        ),
        (
            "{repo: a/b, engine: ''}",
            "params.yaml: models.m.engine must be an engine name such as 'musicgen', got a string (''). "
            "Fix the entry in params.yaml.",
        ),
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


def _params_error(tmp_path: Path, content: str | bytes) -> str:
    path = tmp_path / "params.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ParamsError) as exc:
        load_params(path)
    return str(exc.value)


def test_invalid_yaml_is_one_line_with_the_place(tmp_path: Path):
    assert _params_error(tmp_path, "models:\n  m:\n    repo: a/b: c\n") == (
        "params.yaml line 3, column 14: mapping values are not allowed here. Fix the file."
    )
    assert _params_error(tmp_path, "models: [\n") == (
        "params.yaml line 2, column 1: expected the node content, but found '<stream end>'. Fix the file."
    )


def test_params_that_are_not_utf8(tmp_path: Path):
    assert _params_error(tmp_path, b"music:\n  model: caf\xe9\n") == (
        "params.yaml is not UTF-8 text (byte 0xe9 at offset 19). Save it as UTF-8."
    )


@pytest.mark.parametrize("section", ["music", "pipeline", "prompt_sets", "evaluate", "samples", "video"])
def test_settings_sections_must_be_mappings(tmp_path: Path, section):
    assert _params_error(tmp_path, f"{section}: [1, 2]\n") == (
        f"params.yaml: '{section}' must be a mapping of settings, got a list ([1, 2]). "
        "See the README's params.yaml section."
    )


def test_other_shapes_of_params_are_one_line_errors(tmp_path: Path):
    assert _params_error(tmp_path, "text: hello\n") == (
        "params.yaml: 'text' must be a mapping of settings, got a string ('hello'). "
        "See the README's params.yaml section."
    )
    assert _params_error(tmp_path, "- a\n- b\n") == (
        "params.yaml must be a mapping of sections at the top level, got a list (['a', 'b']). "
        "See the README's params.yaml section."
    )
    assert _params_error(tmp_path, "models: [a]\n") == (
        "params.yaml: 'models' must map names to entries, got a list (['a']). "
        "See the README's params.yaml section."
    )
    (tmp_path / "params.yaml").write_text("music:\nevaluate: {}\n")  # an empty section is allowed
    assert load_params(tmp_path / "params.yaml") == {"music": None, "evaluate": {}}


def test_check_section_returns_the_settings(tmp_path: Path):
    assert check_section({"music": {"duration_s": 5.0}}, "music") == {"duration_s": 5.0}
    assert check_section({}, "songs") == {} and check_section({"songs": None}, "songs") == {}


def test_an_alias_bomb_in_params_fails_fast(tmp_path: Path):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]  # 9**10 values
    started = time.perf_counter()
    message = _params_error(tmp_path, "\n".join(lines) + "\n")
    assert time.perf_counter() - started < 5  # a generous bound: it takes milliseconds
    assert message == (
        "params.yaml line 6, column 5: more than 200,000 values, counting each alias as a full copy "
        "(an alias bomb?). Use fewer aliases or a smaller file."
    )


def test_deep_nesting_in_params_fails_fast(tmp_path: Path):
    started = time.perf_counter()
    message = _params_error(tmp_path, "music: " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert time.perf_counter() - started < 5
    assert (
        message
        == "params.yaml line 1, column 72: collections nested more than 64 levels deep. Flatten the file."
    )


def test_anchors_and_merge_keys_still_work(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text("defaults: &d {duration_s: 5.0, top_k: 250}\nmusic:\n  <<: *d\n  top_k: 50\n")
    assert load_params(path)["music"] == {"duration_s": 5.0, "top_k": 50}
