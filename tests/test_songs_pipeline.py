"""The songs stages on tiny models: songs -> stems -> transcribe -> evaluate-songs, with lineage from
transcript to stems to song, WER/CER per take, and an edit of a non-audio artifact refused."""

import json
import shutil

import pytest

from harmonia.artifacts import load_artifact
from harmonia.errors import AudioError, ParamsError
from harmonia.pipeline import (
    song_list,
    stage_evaluate_songs,
    stage_songs,
    stage_stems,
    stage_transcribe,
    stage_verify,
)
from harmonia.songs import edit
from harmonia.workbench import Workbench

SONGS = """\
songs:
  model: tiny-ace-step
  duration_s: 2.0
  steps: 2
  stems_model: tiny-demucs
  transcribe_model: tiny-whisper
  songs:
    - style: dreamy synth pop
      lyrics: |
        [verse]
        hello there
        [chorus]
        la la
pipeline:
  seeds: [0]
  song_models: [tiny-ace-step]
prompt_sets: {}
"""


@pytest.fixture
def songs_wb(workbench, tiny_ace_step, tiny_demucs, tiny_whisper):
    for models in (tiny_ace_step, tiny_demucs, tiny_whisper):
        shutil.copytree(models, workbench.root / "models", dirs_exist_ok=True)
    params = workbench.root / "params.yaml"
    params.write_text(params.read_text() + SONGS)
    return Workbench.open(workbench.root)


@pytest.mark.slow
def test_songs_stems_transcripts_and_their_evaluation(songs_wb):
    wb, root = songs_wb, songs_wb.root
    verified = stage_verify(wb, root / "reports" / "verify.json")
    assert verified["ok"] and {"tiny-ace-step", "tiny-demucs", "tiny-whisper"} <= {
        entry["name"] for entry in verified["snapshots"]
    }
    songs = stage_songs(wb, "tiny-ace-step", root / "songs" / "m")
    (take,) = songs["takes"]
    assert (root / "songs" / "m" / take["file"]).is_file() and take["duration_s"] == 2.0
    stems = stage_stems(wb, root / "songs" / "m", root / "stems" / "m")
    assert (root / "stems" / "m" / "001-s0-vocals.wav").is_file()
    texts = stage_transcribe(wb, root / "stems" / "m", root / "transcripts" / "m")
    (row,) = texts["takes"]
    assert row["intelligibility"]["reference"] == "hello there la la"
    transcript = load_artifact(wb, row["transcript"])
    (parent,) = transcript.manifest.parents
    assert (parent.id, parent.file, parent.kind) == (stems["takes"][0]["stems"], "vocals.wav", "stems")
    assert load_artifact(wb, parent.id).manifest.parents[0].id == take["artifact"]  # stems -> song
    assert transcript.manifest.request["lyrics"] == "[verse]\nhello there\n[chorus]\nla la"
    assert transcript.manifest.request["language"] == "en"  # the song's
    metrics = stage_evaluate_songs(wb, root / "transcripts" / "m", root / "songs" / "m",
                                   root / "metrics" / "songs-m.json", root / "plots" / "songs-m.json")  # fmt: skip
    assert metrics["takes"] == 1 and metrics["mean_wer"] == row["intelligibility"]["wer"]
    plots = json.loads((root / "plots" / "songs-m.json").read_text())
    assert plots[0]["wer"] == row["intelligibility"]["wer"] and "stems_sum_max_abs_diff" in plots[0]
    again = stage_songs(wb, "tiny-ace-step", root / "songs" / "m")
    assert again["takes"][0]["artifact"] == take["artifact"]  # a re-run is a cache hit
    with pytest.raises(AudioError) as caught:
        edit(wb, "extend", transcript.id, extend_s=2)
    assert str(caught.value) == (
        f"source: artifact {transcript.id} is a transcript artifact with no audio output; extend edits a song "
        "(or any audio artifact)."
    )


def test_an_empty_song_list_is_refused(workbench):
    with pytest.raises(ParamsError, match=r"^params.yaml: songs.songs is empty; list the songs"):
        song_list(workbench)


@pytest.mark.slow
@pytest.mark.parametrize("builder", ["ace-step", "demucs", "whisper"])
def test_tiny_song_models_are_the_same_bytes_from_the_same_seed(workbench, builder, request):
    from harmonia.inventory import read_inventory
    from harmonia.tiny import build_tiny

    session = request.getfixturevalue(f"tiny_{builder.replace('-', '_')}") / f"tiny-{builder}"
    again = build_tiny(workbench, builder, name=f"tiny-{builder}", seed=0).inventory
    assert again.digest == read_inventory(session).digest and again.source.seed == 0
    assert all(not f.path.endswith((".bin", ".pt", ".ckpt", ".pth")) for f in again.files)
    params = workbench.root / "params.yaml"
    params.write_text(
        params.read_text().replace(
            "models:\n", f"models:\n  other: {{builder: {builder}, seed: 1, engine: {builder}}}\n", 1
        )
    )
    other = build_tiny(Workbench.open(workbench.root), builder, name="other", seed=1).inventory
    assert other.digest != again.digest
