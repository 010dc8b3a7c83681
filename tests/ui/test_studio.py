"""The studio driven as a person would, without a browser: set values, click, wait, look."""

import dataclasses
import datetime as dt

import ipywidgets as widgets
import numpy as np
import pytest
import soundfile as sf

from harmonia.artifacts import list_artifacts
from harmonia.engines.musicgen import MusicRequest
from harmonia.ui import Studio
from harmonia.workbench import Workbench

RATE = 32_000


@pytest.fixture
def studio(music_wb):
    return Studio(music_wb, model="tiny-musicgen")


def test_the_picker_lists_local_models_with_their_state(studio):
    labels = dict((value, label) for label, value in studio.model.options)
    assert set(labels) == {"tiny-musicgen", "tiny-musicgen-stereo", "tiny-musicgen-melody"}
    assert labels["tiny-musicgen"] == "tiny-musicgen  (never)" and studio.model.value == "tiny-musicgen"
    from harmonia.snapshots import verify

    verify(studio.wb, "model", "tiny-musicgen")
    studio.refresh_button.click()
    assert dict((v, k) for k, v in studio.model.options)["tiny-musicgen"] == "tiny-musicgen  (ok)"
    assert studio.model.value == "tiny-musicgen"
    assert studio.melody.layout.display == "none"  # text-only model: no melody upload
    studio.model.value = "tiny-musicgen-melody"
    assert studio.melody.layout.display is None


def test_idea_fields_preview_and_request(studio):
    studio.idea.value = "rainy  night"
    studio.genre.value = "Lo-Fi"
    studio.tempo.value = "80"
    studio.key.value = "a min"
    studio.instruments.value = "piano, vinyl crackle"
    assert (
        "<code>lo-fi, rainy night, with piano and vinyl crackle, 80 bpm, A minor</code>"
        in studio.prompt_preview.value
    )
    studio.duration.value, studio.seed.value, studio.guidance.value = 2.0, 42, 4.5
    model, request, ideas = studio.build_request()
    assert model == "tiny-musicgen" and ideas[0].tempo_bpm == 80.0
    assert request == MusicRequest(
        prompts=("lo-fi, rainy night, with piano and vinyl crackle, 80 bpm, A minor",),
        duration_s=2.0, seed=42, temperature=1.0, top_k=250, top_p=1.0, guidance_scale=4.5,
    )  # fmt: skip
    before = studio.seed.value
    studio.dice.click()
    assert studio.seed.value != before


def test_generate_shows_player_pictures_and_summary(studio, music_wb):
    seen = []
    studio.progress.observe(lambda change: seen.append(change["new"]), names="value")
    studio.idea.value = "calm piano"
    studio.duration.value, studio.seed.value = 1.0, 5
    studio.generate_button.click()
    assert studio.generate_button.disabled and not studio.stop_button.disabled
    studio.wait(60)
    (art,) = list_artifacts(music_wb)
    assert studio.last.artifact.id == art.id and not studio.last.cached
    assert f"Generated artifact {art.id} in " in studio.status.value and "harmonia-ok" in studio.status.value
    assert studio.progress.value == studio.progress.max == 53 and seen == sorted(seen) and seen[-1] == 53
    view = studio.result.children[0]
    audio = [w for w in view.children if isinstance(w, widgets.Audio)]
    images = [w for w in view.children if isinstance(w, widgets.Image)]
    assert (
        len(audio) == 1
        and not audio[0].autoplay
        and not audio[0].loop
        and bytes(audio[0].value[:2]) == b"\xff\xfb"
    )  # an MPEG frame
    assert len(images) == 1 and bytes(images[0].value[:8]) == b"\x89PNG\r\n\x1a\n"
    assert art.id in view.children[-1].value and "real-time factor" in view.children[-1].value
    assert not studio.generate_button.disabled and studio.stop_button.disabled
    assert studio.log.outputs == ()
    # the same request again is found, not generated
    studio.generate_button.click()
    studio.wait(60)
    assert studio.last.cached and f"Found artifact {art.id}" in studio.status.value


def test_the_dtype_is_chosen_in_the_studio_and_recorded(studio, music_wb):
    # on the CPU: float32 (params.yaml's default) and bfloat16; float16 runs on a GPU only
    assert studio.dtype.options == ("float32", "bfloat16") and studio.dtype.value == "float32"
    studio.idea.value = "calm piano"
    studio.duration.value, studio.seed.value = 0.5, 5
    studio.precision.value, studio.dtype.value = "int4", "bfloat16"
    studio.generate_button.click()
    studio.wait(60)
    (art,) = list_artifacts(music_wb)
    assert studio.last.artifact.id == art.id and "harmonia-ok" in studio.status.value
    runtime = art.manifest.runtime
    assert (runtime.dtype, runtime.precision) == ("bfloat16", "int4")
    # the same idea in float32 is another artifact (the dtype is part of the id)
    studio.dtype.value = "float32"
    studio.generate_button.click()
    studio.wait(60)
    assert not studio.last.cached and studio.last.artifact.manifest.runtime.dtype == "float32"
    assert len(list_artifacts(music_wb)) == 2


def test_a_dtype_from_params_yaml_that_cannot_run_here_is_offered_and_refused(music_wb):
    wb = dataclasses.replace(
        music_wb, params={**music_wb.params, "music": {"dtype": "float16", "device": "cpu"}}
    )
    studio = Studio(wb, model="tiny-musicgen")
    assert studio.dtype.options == ("float32", "bfloat16", "float16") and studio.dtype.value == "float16"
    studio.idea.value = "x"
    studio.generate_button.click()
    studio.wait(60)
    assert "dtype float16 is not supported on the CPU; use float32 or bfloat16." in studio.status.value
    assert list_artifacts(music_wb) == []


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("idea", "   ", "idea text must not be empty: describe the music in a few words."),
        ("tempo", "fast", "tempo must be a number of beats per minute (e.g. 90), got &#x27;fast&#x27;."),
        ("key", "H minor", "key must be a note A-G"),
    ],
)
def test_bad_input_is_one_clear_line_and_writes_nothing(studio, music_wb, field, value, message):
    studio.idea.value = "x"
    getattr(studio, field).value = value
    assert studio.generate() is None
    assert "harmonia-error" in studio.status.value and message in studio.status.value
    assert "Traceback" not in studio.status.value and studio.log.outputs == ()
    assert list_artifacts(music_wb) == []


def test_engine_errors_show_in_the_status_line(studio, music_wb):
    studio.idea.value = "x"
    studio.continuation.value = (_upload("c.wav", _wav_bytes(seconds=3.0)),)
    studio.duration.value = 2.0
    studio.generate_button.click()
    studio.wait(60)
    assert "continuation is 3.00 s long but duration_s is 2" in studio.status.value
    assert studio.log.outputs == () and list_artifacts(music_wb) == []


def test_stop_ends_the_generation_and_leaves_no_artifact(studio, music_wb):
    studio.idea.value = "long"
    studio.duration.value = 120.0
    studio.generate_button.click()
    for _ in range(600):
        if studio.progress.value > 0:
            break
        studio._task.wait(0.05)
    studio.stop_button.click()
    studio.wait(60)
    assert (
        "Generation cancelled at step " in studio.status.value
        and "no artifact was written" in studio.status.value
    )
    assert list_artifacts(music_wb) == [] and studio.last is None
    assert not music_wb.artifacts_dir.exists() or list(music_wb.artifacts_dir.iterdir()) == []


def test_melody_upload(studio, music_wb):
    studio.model.value = "tiny-musicgen-melody"
    studio.idea.value = "hum"
    studio.duration.value, studio.seed.value = 1.0, 3
    data = _wav_bytes(seconds=2.0)
    studio.melody.value = (_upload("tune.wav", data),)
    studio.generate_button.click()
    studio.wait(60)
    (art,) = list_artifacts(music_wb)
    kept = art.manifest.to_json()["inputs"]["melody"]
    assert kept["file"] == "inputs/melody.wav" and (art.path / kept["file"]).read_bytes() == data


def _wav_bytes(seconds: float) -> bytes:
    import io

    t = np.arange(int(seconds * RATE)) / RATE
    buffer = io.BytesIO()
    sf.write(buffer, (0.4 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), RATE, format="WAV")
    return buffer.getvalue()


def _upload(name: str, data: bytes) -> dict:
    return {
        "name": name,
        "type": "audio/wav",
        "size": len(data),
        "content": memoryview(data),
        "last_modified": dt.datetime.now(dt.UTC),
    }


def test_the_language_model_expands_the_idea_and_becomes_the_parent(music_wb):
    """The "Expand with the LM" button: the text appears, editable; left as written, the music names
    the text artifact as its parent (role text); edited, the words are the user's own."""
    from harmonia.tiny import build_tiny

    params = music_wb.root / "params.yaml"
    params.write_text(
        params.read_text().replace(
            "models:\n", "models:\n  tiny-lm: {builder: lm, seed: 0, engine: text, license: mit}\n", 1
        )
        + "text:\n  model: tiny-lm\n  max_new_tokens: 24\n"
    )
    wb = Workbench.open(music_wb.root)
    build_tiny(wb, "lm", name="tiny-lm")
    studio = Studio(wb, model="tiny-musicgen")
    assert studio.writer.value == "tiny-lm" and "tiny-lm" not in dict((v, k) for k, v in studio.model.options)
    studio.idea.value = "rain on a tin roof"
    studio.expand_button.click()
    studio.wait(120)
    (text,) = list_artifacts(wb)
    assert text.kind == "text" and "wrote the prompt (artifact " in studio.status.value
    assert studio.idea.value == text.file(text.outputs[0]).read_text(encoding="utf-8").strip()
    studio.duration.value, studio.seed.value = 0.5, 4
    studio.generate_button.click()
    studio.wait(120)
    music = studio.last.artifact
    (parent,) = music.manifest.parents
    assert (parent.id, parent.role, parent.kind) == (text.id, "text", "text")
    studio.idea.value = studio.idea.value + " with strings"  # edited: the user's words, no parent
    _, request, ideas = studio.build_request()
    assert ideas is not None and isinstance(request.prompts, tuple)
    studio.idea.value = ""
    studio.expand_button.click()
    assert "idea is empty: write a few words for the language model to expand." in studio.status.value
