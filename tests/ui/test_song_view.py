"""The song view driven without a browser: counts per section, generate, repaint a range, stems as
players, the transcript beside the lyrics with the misheard words marked."""

import shutil

import pytest

from harmonia.artifacts import list_artifacts
from harmonia.ui import SongView
from harmonia.ui.songs import counts_html, transcript_html
from harmonia.workbench import Workbench

SONGS = """\
songs:
  model: tiny-ace-step
  duration_s: 2.0
  steps: 2
  stems_model: tiny-demucs
  transcribe_model: tiny-whisper
"""


@pytest.fixture
def view_wb(workbench, tiny_ace_step, tiny_demucs, tiny_whisper):
    for models in (tiny_ace_step, tiny_demucs, tiny_whisper):
        shutil.copytree(models, workbench.root / "models", dirs_exist_ok=True)
    params = workbench.root / "params.yaml"
    params.write_text(params.read_text() + SONGS)
    return Workbench.open(workbench.root)


def test_counts_per_section_against_the_duration():
    page = counts_html("[verse]\nhello there\nmy friend\n[chorus]\nla la", 3.0)
    assert "<td>[verse]</td><td>2</td><td>5</td>" in page and "<td>[chorus]</td><td>1</td><td>2</td>" in page
    assert "7 syllables need about 3 s of the 3 s" in page and "too long" not in page
    assert "too long, lengthen the song or cut lines" in counts_html("[verse]\n" + "la " * 40, 2.0)
    assert "[chrous] is not a section tag" in counts_html("[chrous]\nla", 2.0)
    assert "an instrumental" in counts_html("[inst]", 2.0)


def test_the_transcript_marks_the_words_not_understood():
    scores = {"wer": 0.5, "cer": 0.2, "words": [["equal", "hello", "hello"], ["substitute", "there", "their"],
                                                ["delete", "my", ""], ["equal", "friend", "friend"]]}  # fmt: skip
    page = transcript_html(scores, "hello their friend")
    assert "<b>WER</b> 0.500" in page and "hello" in page and "misheard</span>" in page  # and a legend
    assert "<span class='harmonia-substitute'" in page and "title='heard: their'>there</span>" in page
    assert "title='not heard'>my</span>" in page
    assert "(an instrumental" in transcript_html({"wer": None, "cer": None, "words": []}, "la")


@pytest.mark.slow
def test_generate_repaint_stems_and_transcribe_from_the_view(view_wb):
    view = SongView(view_wb)
    assert list(view.model.options) == ["tiny-ace-step"] and view.duration.value == 2.0
    assert (
        view.stems_model.value == "tiny-demucs" and view.transcribe_model.value == "tiny-whisper"
    )  # params.yaml
    view.style.value = "dreamy synth pop"
    view.lyrics.value = "[verse]\nhello there\n[chorus]\nla la"
    view.seed.value = 1
    view.generate_button.click()
    view.wait(120)
    assert "Made artifact" in view.status.value, view.status.value
    song = view.song
    assert song.kind == "song" and view.range.max == 2.0 and not view.repaint_button.disabled
    view.range.value = (0.5, 1.0)
    view.repaint_button.click()
    view.wait(120)
    assert "Made artifact" in view.status.value, view.status.value
    child = view.song
    assert child.manifest.parents[0].id == song.id and child.manifest.request["start_s"] == 0.5
    view.stems_button.click()
    view.wait(120)
    assert "Stems " in view.status.value, view.status.value
    assert [row.children[0].value for row in view.stems.children] == [
        "<b>vocals</b>", "<b>drums</b>", "<b>bass</b>", "<b>other</b>",
    ]  # fmt: skip
    view.transcribe_button.click()
    view.wait(120)
    assert "Transcript " in view.status.value, view.status.value
    assert "<b>WER</b>" in view.transcript.value
    kinds = sorted(a.kind for a in list_artifacts(view_wb))
    assert kinds == ["song", "song", "stems", "transcript"]
