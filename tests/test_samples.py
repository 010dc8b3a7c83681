"""Sample DSP on synthetic signals built here: hits at known times, tones in known keys."""

import json
import math
import zipfile

import numpy as np
import pytest

from harmonia.audio import loudness_lufs, peak_dbfs, read_audio
from harmonia.errors import AudioError, RequestError
from harmonia.samples import (
    Pack,
    check_type,
    estimate_key,
    loop,
    loop_length_samples,
    one_shot,
    required_length_s,
    seam_jump_ratio,
    sfx,
    slice_pack,
    write_pack,
)

RATE = 44_100


def hit(seconds=0.15, freq=180.0, amp=0.5, rate=RATE):
    """A decaying tone that starts at full level (a drum-like hit) and falls 60 dB by its end."""
    t = np.arange(round(seconds * rate)) / rate
    return amp * np.cos(2 * np.pi * freq * t) * np.exp(-t * 6.9 / seconds)


def hits(bpm, count, lead_s=0.25, tail_s=0.5, rate=RATE, pad=None, **kw):
    """``count`` hits on the beat at ``bpm`` after ``lead_s`` of silence.

    ``pad`` = (hz, amp) adds a held tone under them, faded in over 0.1 s from the start.

    Returns ([1, samples] float32, the hits' start samples).
    """
    n = round((lead_s + count * 60 / bpm + tail_s) * rate)
    y = np.zeros(n)
    h = hit(rate=rate, **kw)
    starts = np.array([round((lead_s + k * 60 / bpm) * rate) for k in range(count)])
    for s in starts:
        y[s : s + len(h)] += h[: n - s]
    if pad is not None:
        hz, amp = pad
        t = np.arange(n) / rate
        y += amp * np.sin(2 * np.pi * hz * t) * np.minimum(1.0, t / 0.1)
    return y[None].astype(np.float32), starts


def midi_hz(m):
    return 440.0 * 2 ** ((m - 69) / 12)


def chords(progression, chord_s=0.5, rate=RATE):
    """Sine chords (MIDI notes), each with a 10 ms attack and a decay."""
    t = np.arange(round(chord_s * rate)) / rate
    envelope = np.minimum(1.0, t / 0.01) * np.exp(-2 * t)
    parts = [sum(0.2 * np.sin(2 * np.pi * midi_hz(m) * t) for m in chord) * envelope for chord in progression]
    return np.concatenate(parts)[None].astype(np.float32)


# --- Loop lengths --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bpm", "bars", "expected"),
    [
        (120, 1, 88_200),  # 2 s
        (90, 2, 235_200),  # 5.333... s: 8 beats x 60 x 44100 / 90 is a whole number
        (174, 4, 243_310),  # 243310.34... rounds down
        (60, 1, 176_400),
        (128, 1, 82_688),  # 82687.5: halves round up
    ],
)
def test_loop_is_exact_to_the_sample_and_starts_on_the_first_hit(bpm, bars, expected):
    assert loop_length_samples(bpm, bars, 4, RATE) == expected
    x, starts = hits(bpm, bars * 4 + 2)  # the loop, two beats more, 0.25 s before and 0.5 s after
    result = loop(x, RATE, bpm, bars)
    facts = result.facts
    assert result.samples.shape == (1, expected) and result.samples.dtype == np.float32
    assert facts.length_samples == expected and facts.end_sample - facts.start_sample == expected
    # The cut is on the first hit (the downbeat), moved at most 2 ms towards a quiet sample.
    assert facts.on_beat and abs(facts.start_sample - starts[0]) <= round(0.002 * RATE)
    # Tempo measured on the hits, independently of the requested one.
    assert abs(facts.tempo_error_pct) < 0.05


def test_loop_length_is_rounded_once():
    # 16 bars at 174 bpm: 973241.38 -> 973241, not four rounded 4-bar loops (4 x 243310 = 973240).
    assert loop_length_samples(174, 16, 4, RATE) == 973_241
    assert 4 * loop_length_samples(174, 4, 4, RATE) == 973_240
    assert loop_length_samples(120.5, 1, 4, 48_000) == 95_602  # 95601.66 from the exact fraction


def test_required_length():
    assert required_length_s(120, 2) == pytest.approx(4.0 + 1.0 + 0.02)
    assert required_length_s(90, 1, 3, margin_beats=0) == pytest.approx(2.0 + 0.02)


# --- The seam ------------------------------------------------------------------------------


def test_fold_removes_the_click_at_the_wrap():
    # A held 442.7 Hz tone does not fit a whole number of cycles in 2 s: a plain cut jumps.
    x, _ = hits(120, 6, pad=(442.7, 0.4), amp=0.3)
    result = loop(x, RATE, 120, 1)
    facts, y = result.facts, result.samples
    plain = x[:, facts.start_sample : facts.end_sample]
    # Before: the plain cut clicks. After: the wrap steps like the audio around it.
    assert facts.seam_jump_ratio_before == pytest.approx(seam_jump_ratio(plain))
    assert facts.seam_jump_ratio_before > 10
    assert facts.seam_jump_ratio_after < 1.5
    assert facts.seam_hf_db_before > 20
    assert abs(facts.seam_hf_db_after) < 1
    # The wrap continues as the source did: the loop's first sample is the one after its end.
    assert y[0, 0] == x[0, facts.end_sample]
    assert np.array_equal(y[:, facts.crossfade_samples :], plain[:, facts.crossfade_samples :])
    # Equal power: halfway through the fold both parts weigh sin(pi/4) = cos(pi/4).
    half = facts.crossfade_samples // 2
    expected = (plain[0, half] + x[0, facts.end_sample + half]) * math.sin(math.pi / 4)
    assert y[0, half] == pytest.approx(expected, abs=1e-6)
    assert facts.to_json()["seam_jump_ratio_after"] == round(facts.seam_jump_ratio_after, 6)


def test_loop_without_a_beat_that_fits_starts_at_the_start():
    # The only hits come too late for a 1-bar loop to fit after them: cut from the start.
    x, _ = hits(120, 2, lead_s=1.0, tail_s=0.0)
    x = np.concatenate([x, np.zeros((1, RATE), np.float32)], axis=1)[:, : 88_200 + 882 + 100]
    facts = loop(x, RATE, 120, 1).facts
    assert not facts.on_beat and facts.start_sample <= 100


def test_loop_of_stereo_audio_cuts_every_channel_alike():
    x, _ = hits(120, 6)
    stereo = np.concatenate([x, 0.5 * x])
    result = loop(stereo, RATE, 120, 1)
    assert result.samples.shape == (2, 88_200)
    assert np.allclose(result.samples[1], 0.5 * result.samples[0], atol=1e-7)


# --- One-shots and sound effects ------------------------------------------------------------


def test_one_shot_starts_at_the_onset_and_peaks_at_the_target():
    rng = np.random.default_rng(0)
    lead = 12_345
    h = hit(0.3)
    x = np.concatenate([np.zeros(lead), h, np.zeros(RATE)])
    x = (x + 1e-5 * rng.standard_normal(len(x)))[None].astype(np.float32)  # a -100 dBFS floor
    shot = one_shot(x, RATE)
    assert round(peak_dbfs(shot), 4) == -1.0
    gain = 10 ** (-1 / 20) / np.max(np.abs(x))
    # The first sample is the hit's first sample: the 0.28 s of leading silence is gone.
    assert shot[0, 0] == pytest.approx(x[0, lead] * gain, rel=1e-5)
    assert np.allclose(shot[0, :1000], x[0, lead : lead + 1000] * gain, rtol=1e-5, atol=1e-7)
    # It ends where the hit falls 60 dB below its peak, faded to zero.
    assert abs(shot.shape[1] - len(h)) < 0.01 * RATE and shot[0, -1] == 0.0


def test_one_shot_at_the_very_start_and_max_length():
    x = np.concatenate([hit(3.0), np.zeros(1000)])[None].astype(np.float32)
    shot = one_shot(x, RATE, max_s=0.5, peak_dbfs=-6.0)
    assert shot.shape == (1, RATE // 2) and round(peak_dbfs(shot), 4) == -6.0
    fade = round(0.01 * RATE)
    assert np.all(np.abs(shot[0, -fade:]) <= np.abs(x[0, RATE // 2 - fade : RATE // 2]) * 1.1)


def test_sfx_is_trimmed_to_the_sample():
    body = hit(0.4, amp=0.8)
    x = np.concatenate([np.zeros(5000), body, np.zeros(7000)])[None].astype(np.float32)
    out = sfx(x, RATE)
    last = np.flatnonzero(np.abs(body) >= 0.8 * 1e-3)[-1]
    assert np.array_equal(out, x[:, 5000 : 5000 + last + 1])


# --- Keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("progression", "key"),
    [
        ([(62, 66, 69), (67, 71, 74), (69, 73, 76), (62, 66, 69)], "D major"),  # I IV V I
        ([(57, 60, 64), (62, 65, 69), (64, 68, 71), (57, 60, 64)], "A minor"),  # i iv V i
        ([(66, 70, 73), (71, 75, 78), (73, 77, 80), (66, 70, 73)], "F♯ major"),
    ],
)
def test_key_of_a_cadence(progression, key):
    estimate = estimate_key(chords(progression), RATE)
    assert estimate.key == key and estimate.strength > 0.9


# --- Packs ---------------------------------------------------------------------------------


def test_slicing_a_click_track_finds_its_hits_and_tempo():
    x, starts = hits(120, 16)
    pack = slice_pack(x, RATE)
    assert isinstance(pack, Pack) and pack.onsets == 16
    shots = pack.one_shots
    assert len(shots) == 16
    assert max(abs(s.start_s - t / RATE) for s, t in zip(shots, starts)) < 0.001
    assert all(0.14 < s.duration_s < 0.16 for s in shots)  # each hit, to where it falls silent
    assert abs(pack.tempo_bpm - 120) < 0.1
    # Four 1-bar loops from the first hit, each exactly 2 s.
    assert [round(s.start_s, 3) for s in pack.loops] == [0.25, 2.25, 4.25, 6.25]
    assert all(s.samples.shape == (1, 88_200) and s.tempo_bpm == pack.tempo_bpm for s in pack.loops)
    first = shots[0].to_json()
    assert first["file"] == "one-shots/001.wav" and first["type"] == "one-shot"
    assert first["peak_dbfs"] == pytest.approx(peak_dbfs(shots[0].samples), abs=1e-5)
    assert first["loudness_lufs"] is None  # under 0.4 s
    assert pack.loops[0].loudness_lufs == pytest.approx(loudness_lufs(pack.loops[0].samples, RATE))


def test_slicing_at_a_known_tempo():
    # Loud hits at 60 bpm with soft ones between them; told the tempo is 60, bars are 4 s.
    loud, _ = hits(60, 8, tail_s=1.0)
    soft, _ = hits(60, 8, lead_s=0.75, tail_s=0.5, amp=0.15)
    pack = slice_pack(loud + soft, RATE, types=("loop",), bpm=60)
    assert pack.tempo_bpm == 60.0 and not pack.one_shots
    assert [(round(s.start_s, 3), s.samples.shape[1]) for s in pack.loops] == [
        (0.25, 176_400),
        (4.25, 176_400),
    ]


def test_slicing_keeps_each_chord_with_its_key():
    progression = [(62, 66, 69), (67, 71, 74), (69, 73, 76), (62, 66, 69)]
    pack = slice_pack(chords(progression), RATE, types=("one-shot",))
    assert pack.key == "D major" and not pack.loops
    assert [s.key for s in pack.one_shots] == ["D major", "G major", "A major", "D major"]
    # Over a held sound an onset stays where librosa put it: at most a hop before the chord.
    assert all(-0.02 <= s.start_s - 0.5 * i <= 0.0 for i, s in enumerate(pack.one_shots))


def test_pack_folder_and_zip_repeat_byte_for_byte(tmp_path):
    x, _ = hits(120, 10)
    pack = slice_pack(x, RATE)
    a = write_pack(pack, tmp_path / "a" / "drums", make_zip=True)
    b = write_pack(slice_pack(x, RATE), tmp_path / "b" / "drums", make_zip=True)  # sliced again
    assert a.files == b.files
    assert a.files[-1] == "pack.json" and "loops/001.wav" in a.files and "one-shots/010.wav" in a.files
    for name in a.files:
        assert (a.folder / name).read_bytes() == (b.folder / name).read_bytes()
    assert a.zip_path.name == "drums.zip" and a.zip_path.read_bytes() == b.zip_path.read_bytes()
    with zipfile.ZipFile(a.zip_path) as archive:
        entries = archive.infolist()
    assert [e.filename for e in entries] == [f"drums/{name}" for name in a.files]
    assert {e.date_time for e in entries} == {(1980, 1, 1, 0, 0, 0)}
    # What was written reads back: the JSON lists every slice, the WAVs hold its samples exactly.
    data = json.loads((a.folder / "pack.json").read_text(encoding="utf-8"))
    assert [s["file"] for s in data["slices"]] == [s.file for s in pack.slices]
    assert data["source"]["tempo_bpm"] == round(pack.tempo_bpm, 6)
    clip = read_audio(a.folder / "loops/001.wav")
    assert np.array_equal(clip.samples, pack.loops[0].samples) and clip.sample_rate == RATE
    # Written again over itself: replaced, not merged.
    smaller = slice_pack(x, RATE, types=("loop",))
    again = write_pack(smaller, a.folder)
    assert not (a.folder / "one-shots").exists()
    assert again.files == ("loops/001.wav", "loops/002.wav", "pack.json")
    assert again.zip_path is None and not a.zip_path.exists()  # no zip of the older pack beside it


# --- Errors --------------------------------------------------------------------------------


def test_bad_requests_are_refused_with_what_to_do():
    x, _ = hits(120, 6)
    cases = [
        (lambda: loop(x, RATE, 0, 1), "bpm must be a number in [20, 400] beats per minute, got 0. Give the tempo in that range."),
        (lambda: loop(x, RATE, 1000.0, 1), "bpm must be a number in [20, 400] beats per minute, got 1000.0. Give the tempo in that range."),
        (lambda: loop(x, RATE, 120, 0), "bars must be an integer in [1, 64], got 0. Pick a loop length in that range."),
        (lambda: loop(x, RATE, 120, 65), "bars must be an integer in [1, 64], got 65. Pick a loop length in that range."),
        (lambda: loop(x, RATE, 120, 1.5), "bars must be an integer in [1, 64], got 1.5. Pick a loop length in that range."),
        (lambda: loop(x, RATE, 120, 1, beats_per_bar=0), "beats_per_bar must be an integer in [1, 16], got 0. Use 4 for 4/4, 3 for 3/4."),
        (lambda: loop(x, RATE, 120, 1, crossfade_s=2.0), "crossfade_s must be in [0.001, 0.5] seconds, got 2.0. The default is 0.02."),
        (lambda: one_shot(x, RATE, max_s=0), "max_s must be > 0 and <= 30 seconds, got 0. Pick a one-shot length in that range."),
        (lambda: one_shot(x, RATE, peak_dbfs=3.0), "peak_dbfs must be in [-60, 0] dBFS, got 3.0. Pick a peak at or below full scale."),
        (lambda: sfx(x, RATE, top_db=0), "top_db must be in [10, 120] dB, got 0. The default is 60."),
        (lambda: check_type("kick"), "type must be one of one-shot, loop, sfx, got 'kick'. Pick one of those."),
        (lambda: slice_pack(x, RATE, types=("sfx",)), "types must be one of one-shot, loop, got 'sfx'. Pick one of those."),
        (lambda: slice_pack(x, RATE, types=()), "types must name at least one of one-shot, loop, got (). Pick one or both."),
        (lambda: slice_pack(x, RATE, bpm=-5), "bpm must be a number in [20, 400] beats per minute, got -5. Give the tempo in that range."),
        (lambda: slice_pack(x, RATE, loop_bars=0), "loop_bars must be an integer in [1, 64], got 0. Pick a loop length in that range."),
        (lambda: required_length_s(120, 1, margin_beats=-1), "margin_beats must be in [0, 16] beats, got -1. The default is 2."),
        (lambda: loop(x, RATE, True, 1), "bpm must be a number in [20, 400] beats per minute, got True. Give the tempo in that range."),
        (lambda: loop(x, RATE, float("nan"), 1), "bpm must be a number in [20, 400] beats per minute, got nan. Give the tempo in that range."),
        (lambda: loop(x, RATE, 400, 1, crossfade_s=0.4), "crossfade_s must be in [0.001, 0.3] seconds, got 0.4. The default is 0.02."),
        (lambda: one_shot(x, RATE, fade_out_s=-0.1), "fade_out_s must be in [0, 1] seconds, got -0.1. The default is 0.01."),
        (lambda: slice_pack(x, RATE, max_one_shot_s=31), "max_one_shot_s must be > 0 and <= 30 seconds, got 31. Pick a one-shot length in that range."),
    ]  # fmt: skip
    for call, message in cases:
        with pytest.raises(RequestError) as info:
            call()
        assert str(info.value) == message


def test_unusable_audio_is_refused_with_what_to_do():
    x, _ = hits(120, 6)
    cases = [
        (lambda: one_shot(np.zeros((1, 0), np.float32), RATE), "audio is empty (shape (1, 0)): there is nothing to cut. Give audio [channels, samples] with sound in it."),
        (lambda: sfx(np.zeros((2, 1000), np.float32), RATE), "audio is silent (peak -inf dBFS, below -60 dBFS): there is nothing to cut. Give audio with sound in it."),
        (lambda: loop(np.full((1, 1000), 1e-4, np.float32), RATE, 120, 1), "audio is silent (peak -80.0 dBFS, below -60 dBFS): there is nothing to cut. Give audio with sound in it."),
        (lambda: loop(x[:, : RATE * 2], RATE, 120, 1), "audio is 2.000 s, but a 1-bar loop at 120 bpm (2.000 s) and its 0.02 s crossfade need 2.020 s. Give at least 3.020 s (required_length_s)."),
        (lambda: slice_pack(x[:, 11025:11325], RATE), "audio: no onsets found in 0.007 s: librosa found no hit or note start to cut at. Give audio with distinct hits or notes, or cut a loop at a known bpm with loop()."),
        (lambda: one_shot(np.zeros((2, 2, 2), np.float32) + 0.5, RATE), "audio: expected an array [samples] or [channels, samples], got shape (2, 2, 2)."),
    ]  # fmt: skip
    for call, message in cases:
        with pytest.raises(AudioError) as info:
            call()
        assert str(info.value) == message
