"""The gallery and the models panel, driven without a browser."""

import datetime as dt

import ipywidgets as widgets

from harmonia.engines.musicgen import MusicRequest
from harmonia.generation import generate
from harmonia.ui import Gallery, ModelsPanel


def _make(wb, model, prompt, seed, guidance=3.0):
    request = MusicRequest(prompt, duration_s=0.5, seed=seed, guidance_scale=guidance)
    return generate(wb, model, request, previews=False).artifact


def test_filters_play_manifest_ab_and_reproduce(music_wb):
    a = _make(music_wb, "tiny-musicgen", "calm piano", 1)
    b = _make(music_wb, "tiny-musicgen", "calm piano", 2, guidance=5.0)
    c = _make(music_wb, "tiny-musicgen-stereo", "loud drums", 1)
    gallery = Gallery(music_wb)
    assert set(gallery.ids()) == {a.id, b.id, c.id}
    assert list(gallery.model_filter.options) == ["(all models)", "tiny-musicgen", "tiny-musicgen-stereo"]

    gallery.model_filter.value = "tiny-musicgen-stereo"
    assert gallery.ids() == [c.id]
    gallery.model_filter.value = "(all models)"
    gallery.prompt_filter.value = "PIANO calm"
    assert set(gallery.ids()) == {a.id, b.id}
    gallery.since.value = dt.date.today() + dt.timedelta(days=1)
    assert gallery.ids() == []
    gallery.since.value = None

    gallery.select([a.id])
    gallery.play_button.click()
    (view,) = gallery.view.children
    assert any(isinstance(w, widgets.Audio) for w in view.children)
    gallery.manifest_button.click()
    assert f"&quot;id&quot;: &quot;{a.id}&quot;" in gallery.view.children[0].value

    gallery.ab_button.click()
    assert "pick exactly 2 artifacts for this (selected: 1)." in gallery.status.value
    gallery.select([a.id, b.id])
    gallery.ab_button.click()
    columns, diff = gallery.view.children[0].children
    assert len(columns.children) == 2
    assert "<td>request.seed</td><td>1</td><td>2</td>" in diff.value
    assert "<td>request.guidance_scale</td><td>3.0</td><td>5.0</td>" in diff.value
    assert "request.prompts" not in diff.value

    gallery.select([a.id])
    gallery.reproduce_button.click()
    gallery.wait(60)
    assert (
        f"{a.id}: identical (1 output, same sha256)" in gallery.status.value
        and "harmonia-ok" in gallery.status.value
    )


def test_empty_gallery_and_nothing_selected(music_wb):
    gallery = Gallery(music_wb)
    assert gallery.ids() == []
    gallery.play_button.click()
    assert "pick an artifact in the list first." in gallery.status.value


def test_models_panel_verifies_and_fetches(music_wb, hub):
    panel = ModelsPanel(music_wb, endpoint=hub.url)
    assert "<td>tiny-musicgen</td><td>synthetic:musicgen</td>" in panel.table.value
    assert ("model toy", ("model", "toy")) in panel.fetch_name.options
    panel.verify_all_button.click()
    panel.wait(60)
    assert "3 snapshots ok." in panel.status.value and panel.table.value.count(">ok 20") == 3

    (music_wb.snapshot_dir("model", "tiny-musicgen") / "config.json").write_text("{}")
    panel.verify_all_button.click()
    panel.wait(60)
    assert (
        "model tiny-musicgen: FAILED: 1 truncated (config.json)" in panel.status.value
        and "harmonia-error" in panel.status.value
    )

    panel.fetch_name.value = ("model", "toy")
    panel.fetch_button.click()
    panel.wait(60)
    assert "fetched: models/toy = acme/toy@" in panel.status.value
    assert "<td>toy</td><td>hf:acme/toy</td>" in panel.table.value

    panel.fetch_name.value = ("model", "private")
    panel.fetch_button.click()
    panel.wait(60)
    assert "acme/private was not found on" in panel.status.value and "harmonia-error" in panel.status.value
    assert panel.log.outputs == ()
