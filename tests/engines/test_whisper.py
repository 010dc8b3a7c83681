"""The whisper engine on the tiny model, and intelligibility: WER/CER on a fixture with known words,
transcripts as artifacts that reproduce (in a fresh process too), refusals before loading."""

import itertools

import numpy as np
import pytest
import soundfile as sf

from harmonia.artifacts import list_artifacts
from harmonia.engines.whisper import WhisperEngine
from harmonia.errors import AudioError, RequestError
from harmonia.generation import generate, reproduce
from harmonia.lyrics import intelligibility, normalise
from harmonia.requests import TranscribeRequest
from tests.conftest import run_cli

MODEL = "tiny-whisper"
LYRICS = "[verse]\nHello, there my friend!\n[chorus]\nLa la, la.\n[inst]"


def _voice(wb, seconds=2.0, rate=22_050, name="voice.wav"):
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    path = wb.root / name
    sf.write(path, wave.astype(np.float32), rate, subtype="FLOAT")
    return path


def test_word_and_character_error_rates_on_known_words():
    assert normalise(LYRICS) == "hello there my friend la la la"
    perfect = intelligibility("hello there my friend, la la la", LYRICS)
    assert perfect.wer == 0.0 and perfect.cer == 0.0
    one = intelligibility("Hello their my friend la la la", LYRICS)
    assert one.wer == round(1 / 7, 6) and one.cer == round(2 / 30, 6)  # there -> their: 2 of 30 characters
    assert ("substitute", "there", "their") in one.words
    missing = intelligibility("hello my friend", LYRICS)
    assert missing.wer == round(4 / 7, 6)  # "there" and three "la" deleted
    assert [w[0] for w in missing.words] == ["equal", "delete", "equal", "delete"]
    assert intelligibility("", LYRICS).wer == 1.0
    instrumental = intelligibility("la", "[inst]\n[outro]")
    assert instrumental.wer is None and instrumental.cer is None


def test_a_transcript_is_an_artifact_with_its_scores_and_reproduces(whisper_wb):
    source = _voice(whisper_wb)
    seen = []
    done = generate(whisper_wb, MODEL, TranscribeRequest(source=str(source), lyrics=LYRICS, language="en"),
                    progress=lambda d, t: seen.append((d, t)))  # fmt: skip
    art = done.artifact
    assert art.kind == "transcript" and [o.path for o in art.outputs] == ["take-0.txt"] and seen == [(1, 1)]
    text = (art.path / "take-0.txt").read_text()
    details = art.manifest.engine.details
    assert details["transcript"] == text and text and set(text) <= set("abcdefghijklmnopqrstuvwxyz ")
    scores = details["intelligibility"]
    assert scores == intelligibility(text, LYRICS).to_json()
    assert scores["reference"] == "hello there my friend la la la" and scores["wer"] >= 0.0
    assert art.manifest.request["lyrics"] == LYRICS and art.manifest.request["language"] == "en"
    assert reproduce(whisper_wb, art.id).verified
    long = generate(whisper_wb, MODEL, TranscribeRequest(source=str(_voice(whisper_wb, 31.0, 16_000, "long.wav")),
                                                         max_new_tokens=8))  # fmt: skip
    assert len(long.artifact.manifest.engine.details["windows"]) == 2  # 30 s windows
    assert long.artifact.manifest.engine.details["intelligibility"] is None


def test_bad_requests_are_refused_before_the_model_loads(whisper_wb, monkeypatch):
    wb = whisper_wb
    monkeypatch.setattr(
        WhisperEngine, "load", classmethod(lambda *a, **k: pytest.fail("the model was loaded"))
    )
    with pytest.raises(RequestError) as caught:
        generate(wb, MODEL, TranscribeRequest(source=str(_voice(wb)), language="xx"))
    assert str(caught.value) == (
        "language 'xx' is not one model 'tiny-whisper' knows; known: de, en, es, fr, it, ja, zh. "
        "Leave it out to let the model detect it."
    )
    silent = wb.root / "silent.wav"
    sf.write(silent, np.zeros(16_000, dtype=np.float32), 16_000)
    with pytest.raises(
        AudioError, match=r"is silent \(peak -inf dBFS, below -60 dBFS\): there is nothing to transcribe"
    ):
        generate(wb, MODEL, TranscribeRequest(source=str(silent)))
    assert not list_artifacts(wb)


@pytest.mark.slow
def test_a_transcript_from_the_cli_reproduces_in_this_process(whisper_wb, tmp_path):
    lyrics = tmp_path / "lyrics.txt"
    lyrics.write_text(LYRICS)
    voice = _voice(whisper_wb)
    made = run_cli("transcribe", str(voice), "--model", MODEL, "--lyrics", str(lyrics), "--language", "en",
                   cwd=whisper_wb.root)  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "transcribed: transcript " in made.stdout and "  WER       " in made.stdout
    (art,) = list_artifacts(whisper_wb)
    assert reproduce(whisper_wb, art.id).verified  # made in another process, the same text here
    here = generate(whisper_wb, MODEL, TranscribeRequest(source=str(voice), lyrics=LYRICS, language="en"))
    assert here.cached and here.artifact.id == art.id


def test_a_song_of_unknown_language_is_transcribed_with_the_language_detected(
    whisper_wb, tiny_ace_step, monkeypatch
):
    import shutil

    from harmonia.requests import SongRequest
    from harmonia.songs import transcribe

    shutil.copytree(tiny_ace_step, whisper_wb.root / "models", dirs_exist_ok=True)
    request = SongRequest("synth pop", lyrics=LYRICS, language="unknown", duration_s=3.0, steps=1, seed=1)
    song = generate(whisper_wb, "tiny-ace-step", request, threads=1, previews=False).artifact
    done = transcribe(whisper_wb, song.id, model=MODEL)  # the song's language is not one Whisper knows
    assert done.artifact.manifest.request["language"] is None
    assert done.artifact.manifest.request["lyrics"] == LYRICS
    assert [p.id for p in done.artifact.manifest.parents] == [song.id]


def test_the_windows_are_the_pipelines_own_chunks_and_overlap():
    from harmonia.engines.whisper import OVERLAP_S, RATE, WINDOW_S, window_spans

    assert [(a / RATE, b / RATE) for a, b in window_spans(65 * RATE)] == [(0, 30), (20, 50), (40, 65)]
    assert window_spans(31 * RATE) == ((0, 30 * RATE), (20 * RATE, 31 * RATE))
    assert window_spans(30 * RATE) == ((0, 30 * RATE),) and window_spans(RATE) == ((0, RATE),)
    assert window_spans(55 * RATE)[-1] == (40 * RATE, 55 * RATE)  # not a sliver that is all overlap
    for seconds in (31, 47.3, 65, 200.5):
        spans = window_spans(round(seconds * RATE))
        assert spans[0][0] == 0 and spans[-1][1] == round(seconds * RATE)
        for (a0, a1), (b0, _) in itertools.pairwise(spans):
            assert a1 - b0 == 2 * OVERLAP_S * RATE and a1 - a0 == WINDOW_S * RATE
        # any stretch up to 2 * OVERLAP_S long (a sung word or two) lies whole inside some window
        for t in np.arange(0, seconds - 2 * OVERLAP_S, 0.25):
            a, b = round(t * RATE), round((t + 2 * OVERLAP_S) * RATE)
            assert any(s <= a and b <= e for s, e in spans)


def test_a_word_across_a_window_edge_is_written_once(whisper_wb, monkeypatch):
    """The tiny model speaks random text, so its forward is replaced by one that 'hears' the words whose
    bursts lie in its window (a cut word as a garbled token, as a real model would); the join is the pipeline's."""
    import torch

    from harmonia.engines.whisper import RATE, window_spans
    from harmonia.generation import load_engine

    engine = load_engine(whisper_wb, MODEL)
    tokenizer = engine.asr.tokenizer
    words = [(1.0 + 3 * k, 1.8 + 3 * k) for k in range(21)]  # 0.8 s bursts every 3 s up to 62.8 s
    words[9] = (29.6, 30.4)  # across the old hard edge at 30 s (and window 0's end)
    words[16] = (49.6, 50.4)  # across window 1's end
    ids = [
        tokenizer.convert_tokens_to_ids(t) for t in ("a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k")
    ]
    word_ids = [ids[k % 10] for k in range(len(words))]
    garbled = ids[10]
    seconds = 65.0
    t = np.arange(int(seconds * RATE)) / RATE
    wave = np.zeros_like(t)
    for a, b in words:
        wave[(t >= a) & (t < b)] = 0.3 * np.sin(2 * np.pi * 200 * t[(t >= a) & (t < b)])
    source = whisper_wb.root / "words.wav"
    sf.write(source, wave.astype(np.float32), RATE, subtype="FLOAT")
    spans, heard = window_spans(len(t)), []

    def hearing(model_inputs, **kwargs):
        start, end = (s / RATE for s in spans[len(heard)])
        tokens = []
        for (a, b), token in zip(words, word_ids, strict=True):
            if start <= a and b <= end:
                tokens.append(token)
            elif a < end and b > start:
                tokens.append(garbled)
        heard.append(tokens)
        return {
            "is_last": model_inputs["is_last"],
            "tokens": torch.tensor([tokens]),
            "stride": model_inputs["stride"],
        }

    monkeypatch.setattr(engine.asr, "_forward", hearing)
    result = engine.generate(TranscribeRequest(source=str(source)))
    assert len(heard) == 3 and garbled in heard[0] and garbled in heard[1]  # each cut one word
    assert result.text == tokenizer.decode(word_ids).strip()  # every word once, none garbled
    assert [(w["start_s"], w["end_s"]) for w in result.windows] == [(0.0, 30.0), (20.0, 50.0), (40.0, 65.0)]
    assert result.details()["chunking"]["overlap_s"] == 5
