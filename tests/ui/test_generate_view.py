"""The shell the samples, song and video views share (views.GenerateView): one face, one error path."""

import pytest

from harmonia.ui import SamplesView, SongView, VideoView
from harmonia.ui.views import GenerateView


@pytest.mark.parametrize(
    ("view_type", "engine", "css"),
    [(SamplesView, "stable-audio", "samples"), (SongView, "ace-step", "song"), (VideoView, "wan", "video")],
)
def test_without_a_model_each_view_says_how_to_get_one_and_writes_nothing(workbench, view_type, engine, css):
    view = view_type(workbench)
    assert isinstance(view, GenerateView) and view.engine == engine
    assert f"harmonia-{css}" in view.widget._dom_classes
    assert view.model.value is None
    assert view.model.label == (
        f"no local {engine} model: fetch or build one (harmonia models tiny {engine})"
    )
    assert list(view.actions.children) == [view.generate_button, view.stop_button, view.progress]
    assert view.generate() is None
    assert view.status.value == (
        "<div class='harmonia-status harmonia-error' style='color:#b71c1c'>"
        f"no {engine} model here: build one (harmonia models tiny {engine}) or fetch one.</div>"
    )
    assert not view.generate_button.disabled and view.stop_button.disabled
    assert not (workbench.root / "artifacts").exists() or not any((workbench.root / "artifacts").iterdir())
