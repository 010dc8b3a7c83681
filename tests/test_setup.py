"""The set-up promises: pinned environment, conda file in step, CI calling the test command."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _lock_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, ver = line.partition("==")
            assert sep and re.fullmatch(r"[0-9][0-9A-Za-z.]*", ver), f"unpinned lock line: {line!r}"
            pins[name.lower().replace("_", "-")] = ver
    return pins


def test_lock_pins_everything_and_torch_to_the_cpu_build():
    pins = _lock_pins()
    assert pins["torch"] == "2.13.0"
    assert not [p for p in pins if p.startswith("nvidia") or p in {"torchaudio", "torchvision"}]
    for required in ("transformers", "huggingface-hub", "safetensors", "pytest", "ruff"):
        assert required in pins


def test_environment_yml_names_the_same_pins_as_the_lock():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_pins = {}
    for item in pip_section:
        if item.startswith("-e"):
            continue
        name, _, ver = item.partition("==")
        conda_pins[name.lower().replace("_", "-")] = ver
    assert conda_pins == _lock_pins()
    assert "python=3.11" in env["dependencies"]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci/run").read_text()
    assert "make test" in ci
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```")[1]
    assert [line for line in first_block.splitlines()[1:] if line.strip()] == ["make demo", "make test"]


def test_secrets_and_data_stay_out_of_git():
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    for entry in (".env", "/models/", "/datasets/", "/artifacts/", "/.harmonia/", ".venv/"):
        assert entry in ignored
    example = (ROOT / ".env.example").read_text()
    assert "HF_TOKEN=hf_your_token_here" in example
    assert not re.search(r"hf_[A-Za-z0-9]{30,}", example)


def test_params_declares_the_known_models():
    from harmonia.workbench import load_params

    params = load_params(ROOT / "params.yaml")
    assert {"musicgen-small", "tiny-musicgen", "tiny-musicgen-melody"} <= set(params["models"])
