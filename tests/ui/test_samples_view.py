"""The samples view and the gallery's slice button, driven without a browser: set values, click, wait."""

from harmonia.artifacts import children, list_artifacts
from harmonia.generation import generate
from harmonia.requests import MusicRequest
from harmonia.ui import Gallery, SamplesView


def test_the_samples_view_makes_a_grid_of_takes_with_loop_toggles(sample_wb):
    view = SamplesView(sample_wb, model="tiny-stable-audio")
    assert [v for v in view.model.options] == ["tiny-stable-audio"]  # stable-audio models only
    view.prompt.value = "funk drums"
    view.type.value = "loop"
    assert view.loop_fields.layout.display is None and view.duration.layout.display == "none"
    view.bpm.value, view.bars.value, view.takes.value, view.steps.value, view.seed.value = 150.0, 1, 2, 2, 3
    view.generate_button.click()
    view.wait(120)
    assert "Generated artifact" in view.status.value, view.status.value
    (art,) = list_artifacts(sample_wb)
    assert art.kind == "sample" and art.manifest.request["bpm"] == 150.0 and len(art.outputs) == 2
    assert len(view.grid.children) == 2 and all(o.frames == 70_560 for o in art.outputs)
    cell = view.grid.children[0]
    assert cell.player.loop is False
    cell.loop.value = True
    assert cell.player.loop is True
    view.type.value = "one-shot"
    assert view.loop_fields.layout.display == "none"
    _, request = view.build_request()
    assert request.type == "one-shot" and request.bpm is None


def test_the_gallery_slices_an_audio_artifact_into_a_pack(sample_wb):
    music = generate(
        sample_wb, "tiny-musicgen", MusicRequest("drums", duration_s=2.0, seed=1), previews=False
    ).artifact
    gallery = Gallery(sample_wb)
    gallery.select([music.id])
    gallery.slice_button.click()
    gallery.wait(120)
    assert gallery.status.value and "Made pack" in gallery.status.value, gallery.status.value
    (pack,) = children(sample_wb, music.id)
    assert pack.kind == "pack" and gallery.last_pack.id == pack.id and pack.id in gallery.ids()
    assert "pack.zip" in [o.path for o in pack.outputs]
