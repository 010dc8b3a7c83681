"""Fixtures the engine tests share."""

import shutil

import pytest


@pytest.fixture(scope="module")
def wb(tmp_path_factory, tiny_models):
    """A workbench of the tiny models, one per test module (a module's calibration stays its own)."""
    from harmonia.workbench import Workbench
    from tests.conftest import PARAMS

    root = tmp_path_factory.mktemp("engine-wb")
    (root / "params.yaml").write_text(PARAMS)
    shutil.copytree(tiny_models, root / "models")
    return Workbench.open(root)
