"""The video view driven without a browser: a clip by URL with its contact sheet, and a music video
from a music artifact with the shot list edited over its waveform."""

import pytest

from harmonia.artifacts import list_artifacts
from harmonia.generation import generate
from harmonia.requests import MusicRequest
from harmonia.ui import VideoView
from harmonia.ui.video import file_url


def test_a_clip_plays_by_url_with_its_contact_sheet(video_wb, monkeypatch):
    monkeypatch.delenv("HARMONIA_FILES_ROOT", raising=False)
    monkeypatch.delenv("JUPYTERHUB_SERVICE_PREFIX", raising=False)
    view = VideoView(video_wb, model="tiny-wan")
    assert list(view.model.options) == ["tiny-wan"]  # wan models only
    assert view.music_fields.layout.display == "none"
    assert view.player.layout.display == "none" and view.sheet.layout.display == "none"  # no empty player
    view.prompt.value = "a paper boat"
    view.width.value, view.height.value, view.frames.value, view.steps.value, view.seed.value = (
        32,
        32,
        5,
        2,
        1,
    )
    view.generate_button.click()
    view.wait(120)
    assert "Generated artifact" in view.status.value, view.status.value
    (art,) = list_artifacts(video_wb)
    assert (
        view.player.format == "url"
        and bytes(view.player.value) == f"/files/artifacts/{art.id}/take-0.mp4".encode()
    )
    assert bytes(view.sheet.value).startswith(b"\x89PNG") and "5 frames at 8 fps" in view.summary.value
    assert (
        view.player.layout.display is None and view.player.layout.width == "320px"
    )  # 32 px wide: at least 320
    assert view.sheet.layout.display is None and view.sheet.layout.width == "320px"
    view.frames.value = 6
    view.generate_button.click()
    view.wait(60)
    assert "frames must be 4k+1" in view.status.value and "nearest are 5 and 9" in view.status.value


@pytest.mark.slow
def test_a_music_video_from_the_shot_editor(video_wb):
    music = generate(
        video_wb, "tiny-musicgen", MusicRequest("drums", duration_s=2.0, seed=1), previews=False
    ).artifact
    view = VideoView(video_wb, model="tiny-wan")
    view.mode.value = "music video"
    assert view.clip_fields.layout.display == "none" and view.music_fields.layout.display is None
    assert view.soundtrack.value == music.id and view.track_duration_s == pytest.approx(2.0)
    view.split_evenly(2)
    assert view.split.value == 2  # the count field follows
    assert view.shots() == [
        {"start": 0.0, "end": 1.0, "prompt": ""},
        {"start": 1.0, "end": 2.0, "prompt": ""},
    ]
    assert bytes(view.waveform.value).startswith(b"\x89PNG")
    view.width.value, view.height.value, view.steps.value, view.seed.value, view.fps.value = 32, 32, 2, 4, 8.0
    view.generate_button.click()
    view.wait(60)
    assert view.status.value and "shot 0: the prompt is empty" in view.status.value
    for row, prompt in zip(view.shot_rows.children, ("night", "day"), strict=True):
        row.prompt.value = prompt
    view.generate_button.click()
    view.wait(120)
    assert "Generated artifact" in view.status.value, view.status.value
    art = view.last.artifact
    assert [p.id for p in art.manifest.parents] == [music.id]
    assert [s["prompt"] for s in art.manifest.engine.details["shots"]] == ["night", "day"]


def test_file_urls_follow_the_server_root_and_prefix(tmp_path, monkeypatch):
    monkeypatch.setenv("HARMONIA_FILES_ROOT", str(tmp_path))
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/ada/")
    assert file_url(tmp_path / "wb" / "artifacts" / "x" / "take-0.mp4", tmp_path / "wb") == (
        "/user/ada/files/wb/artifacts/x/take-0.mp4"
    )
