"""The ace-step engine on the tiny model: songs (shape, rate, seeds per take), every refusal before
the model loads, cancel, and edits (repaint keeps every sample outside its range, extend, cover)
as children of the song that reproduce bit for bit, in this process and in a fresh one."""

import threading

import numpy as np
import pytest
import soundfile as sf

from harmonia.artifacts import list_artifacts
from harmonia.engines.ace_step import AceStepEngine, splice
from harmonia.errors import AudioError, Cancelled, RequestError
from harmonia.generation import generate, load_engine, reproduce
from harmonia.lyrics import parse_lyrics
from harmonia.requests import SongRequest
from harmonia.songs import edit
from tests.conftest import run_cli

MODEL = "tiny-ace-step"
RATE = 48_000
LYRICS = "[verse]\nhello there\n[chorus]\nla la\n[inst]"


@pytest.fixture
def engine(song_wb):
    return load_engine(song_wb, MODEL, threads=2)


def _song(wb, seed=1, duration_s=2.0, **kw):
    request = SongRequest("dreamy synth pop", lyrics=LYRICS, duration_s=duration_s, steps=2, seed=seed, **kw)
    return generate(wb, MODEL, request, threads=2, previews=False).artifact


def _wave(art, name="take-0.wav"):
    data, rate = sf.read(art.path / name, dtype="float32", always_2d=True)
    return data.T, rate


def test_shape_rate_and_a_seed_per_take(engine):
    request = SongRequest(["synth pop", "folk"], lyrics=LYRICS, duration_s=2.1, steps=2, seed=5, bpm=100,
                          key="a minor", time_signature="3/4")  # fmt: skip
    two = engine.generate(request)
    assert two.sample_rate == RATE and [a.shape for a in two.audio] == [(2, 100_800)] * 2
    assert all(a.dtype == np.float32 for a in two.audio)
    assert [(d["prompt"], d["seed"]) for d in two.take_details] == [(0, 5), (1, 6)]
    assert two.request.key == "A minor" and two.request.duration_s == 2.1
    alone = engine.generate(SongRequest("folk", **{**_fields(request), "seed": 6}))
    assert alone.audio[0].tobytes() == two.audio[1].tobytes()  # take 1 of seed 5 is seed 6's take 0
    assert two.audio[0].tobytes() != two.audio[1].tobytes()
    other = engine.generate(SongRequest("folk", **{**_fields(request), "seed": 6, "lyrics": "[verse]\nbye"}))
    assert other.audio[0].tobytes() != alone.audio[0].tobytes()  # the lyrics matter
    summary = two.details()["lyrics"]
    assert [s["tag"] for s in summary["sections"]] == ["verse", "chorus", "inst"]
    assert summary["lines"] == 2 and summary["syllables"] == 5 and not summary["instrumental"]


def _fields(request):
    return {k: getattr(request, k) for k in ("lyrics", "duration_s", "steps", "bpm", "key", "time_signature")}


def test_progress_counts_every_step_and_cancel_writes_nothing(song_wb, engine):
    seen = []
    engine.generate(
        SongRequest(["a", "b"], duration_s=1.0, steps=3, seed=1), progress=lambda d, t: seen.append((d, t))
    )
    assert seen == [(i, 6) for i in range(1, 7)]
    stop = threading.Event()

    def progress(done, total):
        if done == 2:
            stop.set()

    with pytest.raises(Cancelled, match=r"^Generation cancelled at step 2 of 4; no artifact was written\.$"):
        generate(song_wb, MODEL, SongRequest("x", duration_s=1.0, steps=4, seed=1), threads=2,
                 progress=progress, cancel=stop)  # fmt: skip
    assert not list_artifacts(song_wb)


def test_an_empty_or_inst_only_lyric_is_an_instrumental(engine):
    assert parse_lyrics("").instrumental and parse_lyrics("[inst]\n[outro]").instrumental
    result = engine.generate(SongRequest("ambient", lyrics="", duration_s=1.0, steps=1, seed=0))
    assert result.details()["lyrics"]["instrumental"] is True


def _refused(wb, request, message, error=RequestError):
    with pytest.raises(error) as caught:
        generate(wb, MODEL, request)
    assert str(caught.value) == message
    assert not list_artifacts(wb)


def test_every_bad_request_is_refused_with_one_sentence_before_the_model_loads(song_wb, monkeypatch):
    monkeypatch.setattr(
        AceStepEngine, "load", classmethod(lambda *a, **k: pytest.fail("the model was loaded"))
    )
    wb = song_wb
    long = "[verse]\n" + "\n".join(["hello there my friend how are you"] * 20)
    _refused(
        wb, SongRequest("pop", lyrics=long, duration_s=10, seed=1),
        "lyrics are too long for 10 s: 20 lines, 160 syllables need about 38 s sung (5 syllables a second "
        "and a breath per line); give --duration 38 or more, or cut lines.",
    )  # fmt: skip
    _refused(
        wb, SongRequest("pop", lyrics="[verse]\nla\n[chrous]\nla", seed=1),
        "lyrics line 3: [chrous] is not a section tag; known: [intro], [verse], [pre-chorus], [chorus], "
        "[post-chorus], [hook], [bridge], [interlude], [break], [inst], [instrumental], [solo], [outro]. "
        "Fix the tag or drop it.",
    )  # fmt: skip
    _refused(wb, SongRequest("pop", bpm=20, seed=1), "bpm must be an integer in [30, 300] bpm, got 20.")
    _refused(wb, SongRequest("pop", bpm=301, seed=1), "bpm must be an integer in [30, 300] bpm, got 301.")
    _refused(
        wb, SongRequest("pop", key="H major", seed=1),
        "key must be a note A-G, optionally # or b, then major or minor (e.g. 'A minor', 'F# major'), "
        "got 'H major'.",
    )  # fmt: skip
    _refused(
        wb, SongRequest("pop", time_signature="5/4", seed=1),
        "time_signature must be one of 2/4, 3/4, 4/4, 6/8, got '5/4'.",
    )  # fmt: skip
    with pytest.raises(RequestError, match=r"^language 'xx' is not one the model sings; known: ar, az, "):
        generate(wb, MODEL, SongRequest("pop", language="xx", seed=1))
    _refused(
        wb, SongRequest("pop", duration_s=601, seed=1), "duration_s must be > 0 and <= 600 seconds, got 601."
    )
    _refused(wb, SongRequest("  ", seed=1), "prompts[0] is empty: describe the song's style in a few words.")
    _refused(
        wb, SongRequest("pop", seed=1, task="repaint"),
        "repaint needs a source song: give the artifact id of the song to edit.",
    )  # fmt: skip
    silent = wb.root / "silent.wav"
    sf.write(silent, np.zeros((RATE, 2), dtype=np.float32), RATE, subtype="FLOAT")
    _refused(
        wb, SongRequest("pop", seed=1, task="extend", extend_s=2, source=str(silent)),
        f"source: {silent} is silent (peak below -60 dBFS); there is no song to extend. Give a song with sound in it.",
        AudioError,
    )  # fmt: skip
    assert not list_artifacts(wb)


def test_edit_ranges_are_checked_before_the_model_loads(song_wb, monkeypatch):
    song = _song(song_wb)
    monkeypatch.setattr(
        AceStepEngine, "load", classmethod(lambda *a, **k: pytest.fail("the model was loaded"))
    )
    monkeypatch.setattr("harmonia.generation._engines", {})
    cases = [
        (dict(start_s=1.5, end_s=3.0), "the repaint range 1.5-3 s lies outside the song, which is 2 s long; give --end 2 or less."),
        (dict(start_s=1.0, end_s=1.0), "the repaint range 1-1 s is empty: --end must be after --start."),
        (dict(start_s=1.0), "repaint needs a range: give --start S and --end S in seconds."),
    ]  # fmt: skip
    for fields, message in cases:
        with pytest.raises(RequestError) as caught:
            edit(song_wb, "repaint", song.id, seed=1, **fields)
        assert str(caught.value) == message
    with pytest.raises(RequestError, match=r"^--strength must be >= 0 and <= 1, got 1.5\.$"):
        edit(song_wb, "cover", song.id, strength=1.5, seed=1)
    flagged = [  # a limit names the flag of `harmonia edit` to change, not the request's field
        ("extend", dict(extend_s=0.0), "--seconds must be > 0 and <= 600 seconds, got 0.0."),
        ("repaint", dict(start_s=-1.0, end_s=1.0), "--start must be >= 0 and <= 600 seconds, got -1.0."),
        ("repaint", dict(start_s=0.0, end_s=700.0), "--end must be >= 0 and <= 600 seconds, got 700.0."),
        (
            "repaint",
            dict(start_s=0.0, end_s=1.0, steps=0),
            "steps must be an integer in [1, 200] steps, got 0.",
        ),
    ]
    for task, fields, message in flagged:
        with pytest.raises(RequestError) as caught:
            edit(song_wb, task, song.id, seed=1, **fields)
        assert str(caught.value) == message
    assert [a.id for a in list_artifacts(song_wb)] == [song.id]


def test_repaint_keeps_every_sample_outside_its_range_and_reproduces(song_wb):
    song = _song(song_wb)
    done = edit(song_wb, "repaint", song.id, start_s=0.5, end_s=1.25, seed=3)
    art = done.artifact
    (parent,) = art.manifest.parents
    assert (parent.id, parent.role, parent.kind) == (song.id, "source", "song")
    assert art.kind == "song" and art.manifest.request["task"] == "repaint"
    assert (
        art.manifest.request["prompts"] == ["dreamy synth pop"] and art.manifest.request["lyrics"] == LYRICS
    )
    before, rate = _wave(song)
    after, _ = _wave(art)
    assert rate == RATE and after.shape == before.shape == (2, 96_000)
    start, end = 24_000, 60_000
    assert np.array_equal(after[:, :start], before[:, :start]) and np.array_equal(
        after[:, end:], before[:, end:]
    )
    assert not np.array_equal(after[:, start:end], before[:, start:end])
    (take,) = art.manifest.engine.details["takes"]
    assert take["range_samples"] == [start, end] and take["outside_max_abs_diff"] == 0.0
    assert (
        take["crossfade_samples"] == 960 and take["model_outside_max_abs_diff"] > 0
    )  # the model alone drifts
    assert reproduce(song_wb, art.id).verified
    again = edit(song_wb, "repaint", song.id, start_s=0.5, end_s=1.25, seed=3)
    assert again.cached and again.artifact.id == art.id


@pytest.mark.slow
def test_extend_after_and_before_keeps_the_song_and_cover_makes_a_child(song_wb):
    song = _song(song_wb)
    before, _ = _wave(song)
    after = edit(song_wb, "extend", song.id, extend_s=1.0, seed=2).artifact
    wave, _ = _wave(after)
    assert wave.shape == (2, 144_000) and np.array_equal(wave[:, :96_000], before)
    assert after.manifest.request["duration_s"] == 3.0 and after.manifest.request["before"] is False
    first = edit(song_wb, "extend", song.id, extend_s=0.5, before=True, seed=2).artifact
    wave, _ = _wave(first)
    assert wave.shape == (2, 120_000) and np.array_equal(wave[:, 24_000:], before)
    cover = edit(song_wb, "cover", song.id, strength=0.5, seed=2, prompts=("sad folk",)).artifact
    wave, _ = _wave(cover)
    assert wave.shape == (2, 96_000) and cover.manifest.request["strength"] == 0.5
    assert cover.manifest.request["prompts"] == ["sad folk"]
    assert {p.id for p in cover.manifest.parents} == {song.id}
    for art in (after, first, cover):
        assert art.manifest.parents[0].role == "source"
        assert reproduce(song_wb, art.id).verified


def test_splice_fades_inside_the_range_only():
    source = np.ones((1, 100), dtype=np.float32)
    made = np.zeros((1, 100), dtype=np.float32)
    out, facts = splice(source, made, (40, 60), 4)
    assert np.array_equal(out[:, :40], source[:, :40]) and np.array_equal(out[:, 60:], source[:, 60:])
    assert out[0, 40] == 1.0 and out[0, 44] == 0.0 and out[0, 55] == 0.0 and out[0, 59] > 0.7
    assert facts["outside_max_abs_diff"] == 0.0 and facts["model_outside_max_abs_diff"] == 1.0


@pytest.mark.slow
def test_a_song_from_the_cli_reproduces_in_a_fresh_process(song_wb, tmp_path):
    lyrics = tmp_path / "lyrics.txt"
    lyrics.write_text(LYRICS)
    made = run_cli("generate", "song", "dreamy synth pop", "--model", MODEL, "--lyrics", str(lyrics), "--duration", "2",
                   "--steps", "2", "--seed", "4", "--bpm", "96", "--key", "F# minor", "--threads", "2", cwd=song_wb.root)  # fmt: skip
    assert made.returncode == 0, made.stderr
    (art,) = list_artifacts(song_wb)
    assert art.manifest.request["lyrics"] == LYRICS and art.manifest.request["key"] == "F# minor"
    here = generate(song_wb, MODEL, SongRequest("dreamy synth pop", lyrics=LYRICS, duration_s=2.0, steps=2, seed=4,
                                                bpm=96, key="F# minor"), threads=2)  # fmt: skip
    assert here.cached and here.artifact.id == art.id  # the same id in this process: the same request
    repaint = run_cli(
        "edit", "repaint", art.id, "--start", "0.5", "--end", "1", "--seed", "1", cwd=song_wb.root
    )
    assert repaint.returncode == 0, repaint.stderr
    assert "kept      every sample outside 0.50-1.00 s (max abs difference 0;" in repaint.stdout
    child = next(a for a in list_artifacts(song_wb) if a.id != art.id)
    assert reproduce(song_wb, child.id).verified  # made in another process, the same bytes here
    bad = run_cli(
        "generate", "song", "pop", "--model", MODEL, "--lyrics", "[verse]\nla\n[chrous]\nla", cwd=song_wb.root
    )
    assert bad.returncode != 0 and "error: lyrics line 3: [chrous] is not a section tag" in bad.stderr


def _tone(path, seconds=1.0, rate=24_000, level=0.3):
    t = np.arange(int(seconds * rate)) / rate
    wave = level * np.sin(2 * np.pi * 330 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) / 1.5
    sf.write(path, np.stack([wave, wave], 1).astype(np.float32), rate, subtype="FLOAT")
    return path


def test_a_cover_with_a_reference_clip_is_hashed_kept_and_reproduces(song_wb, tmp_path):
    from harmonia.generation import From

    song = _song(song_wb)
    clip = _tone(tmp_path / "timbre.wav")
    plain = edit(song_wb, "cover", song.id, strength=0.5, seed=2).artifact
    timbre = edit(song_wb, "cover", song.id, strength=0.5, seed=2, reference=str(clip)).artifact
    assert timbre.id != plain.id  # the reference is part of the identity
    assert _wave(timbre)[0].tobytes() != _wave(plain)[0].tobytes()  # and it reaches the model
    kept = timbre.manifest.inputs
    import hashlib

    assert kept["reference"].sha256 == hashlib.sha256(clip.read_bytes()).hexdigest()
    assert kept["reference"].parent is None and kept["reference"].duration_s == 1.0
    assert [p.role for p in timbre.manifest.parents] == ["source"]  # a file is no artifact
    assert reproduce(song_wb, timbre.id).verified
    other = _tone(tmp_path / "other.wav", level=0.2)
    assert (
        edit(song_wb, "cover", song.id, strength=0.5, seed=2, reference=str(other)).artifact.id != timbre.id
    )

    # a reference from an artifact (another song, by id as the CLI passes it, or From) is a parent
    voice = _song(song_wb, seed=9)
    by_id = edit(song_wb, "cover", song.id, strength=0.5, seed=2, reference=voice.id).artifact
    roles = {p.role: p for p in by_id.manifest.parents}
    assert roles["reference"].id == voice.id and roles["source"].id == song.id
    assert roles["reference"].sha256 == voice.manifest.outputs[0].sha256
    again = edit(song_wb, "cover", song.id, strength=0.5, seed=2, reference=From(voice.id))
    assert again.cached and again.artifact.id == by_id.id


@pytest.mark.slow
def test_a_cover_with_a_reference_reproduces_in_a_fresh_process(song_wb, tmp_path):
    song = _song(song_wb)
    cover = edit(
        song_wb, "cover", song.id, strength=0.7, seed=4, reference=str(_tone(tmp_path / "t.wav"))
    ).artifact
    result = run_cli("reproduce", cover.id, cwd=song_wb.root)
    assert result.returncode == 0, result.stderr
    assert f"{cover.id}: identical (1 output, same sha256)" in result.stdout


def test_a_bad_reference_is_refused_in_one_line_before_the_model_loads(song_wb, monkeypatch, tmp_path):
    song = _song(song_wb)
    monkeypatch.setattr(
        AceStepEngine, "load", classmethod(lambda *a, **k: pytest.fail("the model was loaded"))
    )
    monkeypatch.setattr("harmonia.generation._engines", {})
    unreadable = tmp_path / "notes.wav"
    unreadable.write_text("not audio")
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros((RATE, 2), dtype=np.float32), RATE, subtype="FLOAT")
    long = tmp_path / "long.wav"
    sf.write(long, np.full((601 * 100, 1), 0.1, dtype=np.float32), 100, subtype="FLOAT")  # 601 s at 100 Hz
    cases = [
        (unreadable, f"reference: cannot read {unreadable} as audio ("),
        (silent, f"reference: {silent} is silent (peak below -60 dBFS); give a clip with the timbre to "
                 "follow, or leave it out."),
        (long, f"reference: {long} is 601.0 s long; audio inputs are limited to 600 s. Trim it to the part "
               "you want used."),
    ]  # fmt: skip
    for path, message in cases:
        with pytest.raises(AudioError) as caught:
            edit(song_wb, "cover", song.id, strength=0.5, seed=2, reference=str(path))
        assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
    with pytest.raises(
        RequestError, match=r"^reference \(a timbre clip\) is for covers only; leave it out\.$"
    ):
        edit(song_wb, "extend", song.id, extend_s=1.0, seed=2, reference=str(silent))
    assert [a.id for a in list_artifacts(song_wb)] == [song.id]


def test_an_extend_meets_the_song_without_a_dip_or_a_step(song_wb):
    """The level of the first 20 ms of new audio against the next 40 ms (measured on tiny-ace-step:
    0.59 when the join faded in from the padding's silence, 1.01 now)."""
    song = _song(song_wb)
    art = edit(song_wb, "extend", song.id, extend_s=1.0, seed=2).artifact
    wave, _ = _wave(art)
    join, w = 96_000, 960  # 2 s at 48 kHz; 20 ms windows

    def rms(a):
        return float(np.sqrt(np.mean(wave[:, join + a * w : join + (a + 1) * w] ** 2)))

    assert rms(0) / np.mean([rms(1), rms(2)]) > 0.85
    step = np.abs(wave[:, join] - wave[:, join - 1]).max()
    assert step <= np.median(np.abs(np.diff(wave[:, join - 2000 : join])))  # no click either
    (take,) = art.manifest.engine.details["takes"]
    assert take["join"] == "offset" and take["outside_max_abs_diff"] == 0.0


def test_splice_of_padding_continues_from_the_songs_edge():
    t = np.arange(400) / 10  # a 10-sample period: 2 periods in the 20-sample join
    source = np.concatenate([np.sin(2 * np.pi * t[:200]), np.zeros(200)])[None].astype(np.float32)
    made = (0.9 * np.sin(2 * np.pi * t + 0.1))[None].astype(np.float32)  # the model's drifted version
    faded, _ = splice(source, made, (200, 400), 20)
    joined, facts = splice(source, made, (200, 400), 20, padding=True)
    assert np.array_equal(joined[:, :200], source[:, :200]) and facts["join"] == "offset"
    assert joined[0, 200] - joined[0, 199] == pytest.approx(made[0, 200] - made[0, 199], abs=1e-6)
    assert np.array_equal(joined[:, 220:], made[:, 220:])
    level = [
        np.sqrt(np.mean(x[0, 200:220] ** 2)) / np.sqrt(np.mean(made[0, 200:220] ** 2))
        for x in (faded, joined)
    ]
    assert level[0] < 0.7 and level[1] > 0.95  # the fade from silence dipped; the offset join does not
    before = np.concatenate([np.zeros(200), np.sin(2 * np.pi * t[200:])])[None].astype(np.float32)
    ahead, _ = splice(before, made, (0, 200), 20, padding=True)
    assert ahead[0, 200] - ahead[0, 199] == pytest.approx(made[0, 200] - made[0, 199], abs=1e-6)
