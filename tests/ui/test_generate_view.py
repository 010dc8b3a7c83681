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


# -- the model list offers every engine of the view's kind ---------------------------------------------
AUDIOGEN_ENTRIES = """\
  hub-audiogen:
    repo: acme/audiogen
    engine: audiogen
    license: cc-by-nc-4.0
    allow_pickle: true
  tiny-audiogen:
    builder: audiogen
    seed: 0
    engine: audiogen
    license: mit
    allow_pickle: true
"""


def _with_audiogen_entries(wb):
    from harmonia.workbench import Workbench

    text = (wb.root / "params.yaml").read_text()
    (wb.root / "params.yaml").write_text(text.replace("\nmusic:\n", "\n" + AUDIOGEN_ENTRIES + "music:\n", 1))
    return Workbench.open(wb.root)


def test_the_samples_view_offers_stable_audio_and_audiogen_models(sample_wb):
    """An AudioGen snapshot (fetched from a hub on 127.0.0.1) makes samples too: the Samples view
    offers it beside tiny-stable-audio; music, song and video views do not."""
    from harmonia.hub import fetch
    from tests.hubserver import FakeHub

    wb = _with_audiogen_entries(sample_wb)
    with FakeHub() as hub:
        hub.add_repo(
            "acme/audiogen", {"state_dict.bin": b"PICKLE" * 10, "compression_state_dict.bin": b"P" * 9}
        )
        fetch(wb, "model", "hub-audiogen", endpoint=hub.url)
    view = SamplesView(wb)
    assert list(view.model.options) == ["hub-audiogen", "tiny-stable-audio"]  # not tiny-musicgen (music)
    assert SamplesView(wb, model="hub-audiogen").model.value == "hub-audiogen"
    assert SongView(wb).model.value is None and VideoView(wb).model.value is None


@pytest.mark.slow
def test_the_samples_view_offers_tiny_audiogen(sample_wb):
    """tiny-audiogen, built in audiocraft's worker environment, is offered beside tiny-stable-audio."""
    from harmonia.engines.audiocraft import ensure_worker_env
    from harmonia.tiny import build_tiny

    wb = _with_audiogen_entries(sample_wb)
    ensure_worker_env(quiet=True)
    build_tiny(wb, "audiogen", name="tiny-audiogen", seed=0)
    assert list(SamplesView(wb).model.options) == ["tiny-audiogen", "tiny-stable-audio"]
