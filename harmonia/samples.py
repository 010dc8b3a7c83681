"""Sample DSP: one-shots, sound effects and seamless loops cut from audio, and sample packs.

Every function takes float32 audio ``[channels, samples]`` and its sample rate and returns
audio and typed facts. The sample engine shapes what a model generated with them;
``harmonia samples slice`` cuts any audio into a pack with them; the sample engines
(stable-audio, audiogen) share :func:`check_sample_request`, :func:`generated_seconds` and
:func:`shape_take`, so a sample request means the same to every model. This module knows
samples, seconds and beats; nothing about engines' models, artifacts or the CLI.

Analysis runs on the mono mixdown with librosa (onsets, beat tracking, tempo, chroma); cuts
apply to every channel. librosa works in frames of ``HOP`` samples (11.6 ms at 44.1 kHz): an
onset out of silence is refined to the sound's first sample above the silence threshold
(``top_db`` below the peak); over a held sound it stays on librosa's backtracked frame, a
little before the rise, so a cut never lands inside an attack. Beats snap to onsets.
librosa has no key detector: keys come from the Krumhansl–Schmuckler method (correlation
of a clip's chroma with the 24 rotated Krumhansl–Kessler profiles).

A loop's length is ``bars × beats_per_bar × 60 / bpm`` seconds, rounded once to the nearest
sample (halves up), so a loop repeated any number of times stays on the grid. The audio is
cut on a beat and the audio past the loop's end is folded into its head with an equal-power
crossfade: the last sample of the loop is followed, on the wrap, by the sample the source had
next, so the loop repeats without a seam.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
import zipfile
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harmonia.atomic import install, staging_dir
from harmonia.audio import SILENCE_DBFS, Audio, from_array, is_silent, loudness_lufs, peak_dbfs, write_audio
from harmonia.errors import AudioError, RequestError

if TYPE_CHECKING:
    from harmonia.requests import SampleRequest

# What can be asked for.
BPM_RANGE = (20.0, 400.0)
MAX_BARS = 64
BEATS_PER_BAR_RANGE = (1, 16)
MAX_ONE_SHOT_S = 30.0
SAMPLE_TYPES = ("one-shot", "loop", "sfx")  # what the sample engine makes
SLICE_TYPES = ("one-shot", "loop")  # what a pack is cut into

# Defaults.
ONE_SHOT_S = 4.0  # longest one-shot
ONE_SHOT_PEAK_DBFS = -1.0  # one-shots are peak-normalised to this
FADE_OUT_S = 0.01  # raised-cosine fade at a one-shot's end
TOP_DB = 60.0  # silence: more than this below the clip's peak
CROSSFADE_S = 0.02  # equal-power fold of a loop's tail into its head
MARGIN_BEATS = 2.0  # extra audio to generate for a loop: room to find the first beat
PACK_ONE_SHOT_S = 2.0  # longest one-shot in a pack
MIN_ONE_SHOT_S = 0.02  # shorter slices between two onsets are dropped from a pack

# Analysis.
HOP = 512  # librosa's frame hop, in samples
LEAD_HOPS = 4  # silence put before a clip for onset analysis, in hops
QUIET_BLOCK_S = 0.002  # onset refinement: a block this long under the threshold is silence
STRONG_ONSET = 0.5  # a one-shot starts at the first onset at least this strong relative to the strongest
BEAT_FMAX_HZ = 1000.0  # beats are tracked on the onset strength of the mel bands below this
BEAT_MELS = 40  # mel bands below BEAT_FMAX_HZ (more leave empty bands at 2048-point resolution)
SNAP_HOPS = 3  # a tracked beat snaps to an onset at most this many hops away
ZERO_CROSSING_S = 0.002  # a loop cut moves at most this far from its beat to reach a quiet sample
SEAM_WINDOW_S = 0.005  # half the window the spectral seam measure looks at
SEAM_FLOOR_DB = -30.0  # high-pass energy this far below the loop's mean window counts as quiet

PACK_FOLDERS = {"one-shot": "one-shots", "loop": "loops"}
PACK_JSON = "pack.json"
PACK_SCHEMA = 1
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip entry can carry: fixed, so zips repeat

NOTES = ("C", "C♯", "D", "D♯", "E", "F", "F♯", "G", "G♯", "A", "A♯", "B")
# Krumhansl & Kessler (1982) probe-tone ratings, tonic first.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


# --- Results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoopFacts:
    """Where a loop was cut and how well it repeats.

    Seam measures (``before``: the plain cut ``source[start:end]``; ``after``: the folded loop):

    - ``seam_jump_ratio``: the step from the loop's last sample to its first (the wrap), over
      the loop's RMS sample-to-sample step, largest over channels. About 1 when the wrap is as
      smooth as the audio around it; a click is tens.
    - ``seam_hf_db``: the energy of the second difference (a +12 dB/octave high-pass, in
      which a click stands out against tones) in a Hann window of 2 × ``SEAM_WINDOW_S``
      across the wrap, in dB relative to the same window across the loop's end in the
      source (the audio as it ran on), with a floor 30 dB under the loop's mean window
      added to both (so stretches quiet in the highs do not inflate the ratio). 0 dB: the
      wrap sounds like the source running on; a click adds tens of dB.
    """

    # The grid asked for.
    bpm: float
    bars: int
    beats_per_bar: int
    length_samples: int
    duration_s: float
    # What the source holds.
    measured_bpm: float | None  # librosa's tempo, refined on the onsets under its beats
    beats_found: int
    # Where it was cut, in source samples: the loop is source[start:end] with the crossfade
    # samples after end folded into its head.
    start_sample: int
    end_sample: int
    start_s: float
    on_beat: bool  # False: no tracked beat left room for the loop, so it starts at the audio's start
    crossfade_samples: int
    # The seam (see above).
    seam_jump_ratio_before: float
    seam_jump_ratio_after: float
    seam_hf_db_before: float
    seam_hf_db_after: float

    @property
    def tempo_error_pct(self) -> float | None:
        """How far the measured tempo is from the requested one, in percent."""
        if self.measured_bpm is None:
            return None
        return 100.0 * (self.measured_bpm - self.bpm) / self.bpm

    def to_json(self) -> dict:
        data = {k: _rounded(v) for k, v in self.__dict__.items()}
        data["tempo_error_pct"] = _rounded(self.tempo_error_pct)
        return data


@dataclass(frozen=True, eq=False)
class Loop:
    """A seamless loop: ``samples`` ``[channels, length_samples]`` at ``sample_rate``, and its facts."""

    samples: np.ndarray
    sample_rate: int
    facts: LoopFacts


@dataclass(frozen=True)
class KeyEstimate:
    """A key from Krumhansl–Schmuckler: the best of 24 correlations of chroma with key profiles."""

    key: str  # "A minor", "F♯ major" (the spelling of prompts.normalize_key)
    strength: float  # Pearson correlation of the clip's chroma with that key's profile, in [-1, 1]


@dataclass(frozen=True, eq=False)
class Slice:
    """One slice of a pack: its audio ``[channels, samples]`` and facts."""

    type: str  # "one-shot" or "loop"
    index: int  # 1-based within its type: the file number
    samples: np.ndarray
    sample_rate: int
    # Where it came from, in seconds of the source.
    start_s: float
    end_s: float
    # What it holds.
    peak_dbfs: float | None
    loudness_lufs: float | None  # None under 0.4 s (BS.1770 needs a 400 ms block)
    tempo_bpm: float | None  # loops: the grid they were cut on; one-shots: None
    key: str | None
    key_strength: float | None

    @property
    def duration_s(self) -> float:
        return self.samples.shape[1] / self.sample_rate

    @property
    def file(self) -> str:
        """Its path inside a pack folder: ``one-shots/001.wav``, ``loops/001.wav``."""
        return f"{PACK_FOLDERS[self.type]}/{self.index:03d}.wav"

    def to_json(self) -> dict:
        return {
            "type": self.type,
            "index": self.index,
            "file": self.file,
            "start_s": _rounded(self.start_s),
            "end_s": _rounded(self.end_s),
            "duration_s": _rounded(self.duration_s),
            "peak_dbfs": _rounded(self.peak_dbfs),
            "loudness_lufs": _rounded(self.loudness_lufs),
            "tempo_bpm": _rounded(self.tempo_bpm),
            "key": self.key,
            "key_strength": _rounded(self.key_strength),
        }


@dataclass(frozen=True, eq=False)
class Pack:
    """Audio cut into one-shots (at onsets) and loops (at bar boundaries, 4/4)."""

    sample_rate: int
    channels: int
    source_sha256: str  # of the source's float32 samples and rate (audio.from_array)
    source_duration_s: float
    onsets: int
    tempo_bpm: float | None  # None: no steady beat was found, so no loops
    key: str | None
    key_strength: float | None
    slices: tuple[Slice, ...]

    @property
    def one_shots(self) -> tuple[Slice, ...]:
        return tuple(s for s in self.slices if s.type == "one-shot")

    @property
    def loops(self) -> tuple[Slice, ...]:
        return tuple(s for s in self.slices if s.type == "loop")

    def to_json(self) -> dict:
        return {
            "schema": PACK_SCHEMA,
            "source": {
                "sha256": self.source_sha256,
                "sample_rate": self.sample_rate,
                "channels": self.channels,
                "duration_s": _rounded(self.source_duration_s),
                "onsets": self.onsets,
                "tempo_bpm": _rounded(self.tempo_bpm),
                "key": self.key,
                "key_strength": _rounded(self.key_strength),
            },
            "slices": [s.to_json() for s in self.slices],
        }


@dataclass(frozen=True)
class PackFiles:
    """What :func:`write_pack` wrote."""

    folder: Path
    files: tuple[str, ...]  # relative to folder, sorted
    zip_path: Path | None


def _rounded(value):
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    return value


# --- Checks --------------------------------------------------------------------------------


def _check_audio(samples: np.ndarray, rate: int) -> Audio:
    """The audio as :class:`Audio` (float32 ``[channels, samples]``), or a clear error for empty,
    silent or malformed input."""
    array = np.asarray(samples)
    if array.size == 0:
        raise AudioError(
            f"audio is empty (shape {array.shape}): there is nothing to cut. "
            "Give audio [channels, samples] with sound in it."
        )
    clip = from_array(array, rate, "audio")  # shape, NaN and sample-rate checks
    if is_silent(clip.samples):
        raise AudioError(
            f"audio is silent (peak {peak_dbfs(clip.samples):.1f} dBFS, below {SILENCE_DBFS:g} dBFS): "
            "there is nothing to cut. Give audio with sound in it."
        )
    return clip


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_integer(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_bpm(bpm) -> float:
    low, high = BPM_RANGE
    if not _is_number(bpm) or not low <= bpm <= high:
        raise RequestError(
            f"bpm must be a number in [{low:g}, {high:g}] beats per minute, got {bpm!r}. "
            "Give the tempo in that range."
        )
    return float(bpm)


def _check_bars(bars, name: str = "bars") -> int:
    if not _is_integer(bars) or not 1 <= bars <= MAX_BARS:
        raise RequestError(
            f"{name} must be an integer in [1, {MAX_BARS}], got {bars!r}. Pick a loop length in that range."
        )
    return int(bars)


def _check_beats_per_bar(beats_per_bar) -> int:
    low, high = BEATS_PER_BAR_RANGE
    if not _is_integer(beats_per_bar) or not low <= beats_per_bar <= high:
        raise RequestError(
            f"beats_per_bar must be an integer in [{low}, {high}], got {beats_per_bar!r}. "
            "Use 4 for 4/4, 3 for 3/4."
        )
    return int(beats_per_bar)


def _check_seconds(name: str, value, high: float, what: str) -> float:
    if not _is_number(value) or not 0 < value <= high:
        raise RequestError(
            f"{name} must be > 0 and <= {high:g} seconds, got {value!r}. Pick {what} in that range."
        )
    return float(value)


def _check_range(name: str, value, low: float, high: float, unit: str, what: str) -> float:
    if not _is_number(value) or not low <= value <= high:
        raise RequestError(f"{name} must be in [{low:g}, {high:g}] {unit}, got {value!r}. {what}")
    return float(value)


def check_type(value, allowed: tuple[str, ...] = SAMPLE_TYPES, name: str = "type") -> str:
    """``value`` if it is one of ``allowed``, else a :class:`RequestError` naming them.

    Example:
        >>> check_type("loop")
        'loop'
    """
    if value not in allowed:
        raise RequestError(f"{name} must be one of {', '.join(allowed)}, got {value!r}. Pick one of those.")
    return value


# --- Lengths -------------------------------------------------------------------------------


def loop_length_samples(bpm: float, bars: int, beats_per_bar: int, rate: int) -> int:
    """Samples in ``bars`` bars at ``bpm``: ``bars × beats_per_bar × 60 × rate / bpm``, rounded once.

    The product is computed exactly (a float bpm is an exact fraction) and rounded to the
    nearest sample, halves up: 128 bpm, 1 bar of 4 at 44.1 kHz is 82687.5 -> 82688 samples.
    """
    exact = Fraction(bars * beats_per_bar * 60 * rate) / Fraction(bpm)
    return math.floor(exact + Fraction(1, 2))


def required_length_s(
    bpm: float,
    bars: int,
    beats_per_bar: int = 4,
    margin_beats: float = MARGIN_BEATS,
    crossfade_s: float = CROSSFADE_S,
) -> float:
    """How much audio to generate for :func:`loop`: the loop, ``margin_beats`` beats and the crossfade.

    The margin is room for the first beat to fall after the audio's start (generated audio
    rarely starts exactly on a beat); the crossfade is the tail folded into the loop's head.

    Example:
        >>> required_length_s(120, 2)
        5.02
    """
    bpm, bars = _check_bpm(bpm), _check_bars(bars)
    beats_per_bar = _check_beats_per_bar(beats_per_bar)
    margin_beats = _check_range("margin_beats", margin_beats, 0, 16, "beats", "The default is 2.")
    crossfade_s = _check_range("crossfade_s", crossfade_s, 0.001, 0.5, "seconds", "The default is 0.02.")
    return (bars * beats_per_bar + margin_beats) * 60.0 / bpm + crossfade_s


# --- Analysis ------------------------------------------------------------------------------


def _mono(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=0).astype(np.float32)


def _level(x: np.ndarray) -> np.ndarray:
    """The largest absolute sample over channels, per sample (no cancellation between channels)."""
    return np.max(np.abs(x), axis=0)


def _threshold(level: np.ndarray, top_db: float) -> float:
    return float(level.max()) * 10 ** (-top_db / 20)


@dataclass(frozen=True, eq=False)
class _Onsets:
    """librosa's onset analysis of a clip, in the clip's samples."""

    envelope: np.ndarray  # onset strength per frame, of the clip after LEAD_HOPS hops of silence
    beat_envelope: np.ndarray  # the same from the mel bands below BEAT_FMAX_HZ: what beats are tracked on
    attacks: np.ndarray  # onset samples, refined (see _onsets), ascending
    strengths: np.ndarray  # the onset strength at each onset's peak frame


def _onsets(mono: np.ndarray, level: np.ndarray, rate: int, threshold: float) -> _Onsets:
    """Onsets to the sample: librosa's, backtracked to the quiet before them, then refined.

    The clip is analysed after ``LEAD_HOPS`` hops of silence: librosa's peak picking cannot
    place an onset in a clip's first frames, and a clip that starts with a hit would lose
    it. Each backtracked onset frame is refined within one hop before it to two after: if
    that window holds a 2 ms block under the silence ``threshold``, the onset is the first
    sample at or above the threshold after that block (the sound's first sample); over a
    held sound it stays on librosa's frame, which lies before the rise.
    """
    import librosa

    lead = LEAD_HOPS * HOP
    padded = np.concatenate([np.zeros(lead, dtype=np.float32), mono])
    envelope = librosa.onset.onset_strength(y=padded, sr=rate, hop_length=HOP)
    beat_envelope = librosa.onset.onset_strength(
        y=padded, sr=rate, hop_length=HOP, fmax=min(BEAT_FMAX_HZ, rate / 2), n_mels=BEAT_MELS
    )
    peaks = librosa.onset.onset_detect(onset_envelope=envelope, sr=rate, hop_length=HOP, units="frames")
    starts = librosa.onset.onset_backtrack(peaks, envelope) if peaks.size else peaks
    block = max(1, round(QUIET_BLOCK_S * rate))
    attacks: dict[int, float] = {}
    for peak, frame in zip(peaks.tolist(), starts.tolist()):
        first = min(max(0, frame * HOP - lead), len(level) - 1)
        low = max(0, first - HOP)
        window = level[low : first + 2 * HOP]
        whole = len(window) // block * block
        attack = first
        if whole:
            loudest = window[:whole].reshape(-1, block).max(axis=1)
            quiet = int(np.argmin(loudest))
            if loudest[quiet] < threshold:
                above = np.flatnonzero(window[quiet * block :] >= threshold)
                attack = low + quiet * block + int(above[0]) if above.size else first
        attacks[attack] = max(attacks.get(attack, 0.0), float(envelope[peak]))
    order = sorted(attacks)
    return _Onsets(
        envelope=envelope,
        beat_envelope=beat_envelope,
        attacks=np.asarray(order, dtype=np.int64),
        strengths=np.asarray([attacks[a] for a in order], dtype=np.float64),
    )


def _snap(beats: np.ndarray, attacks: np.ndarray) -> np.ndarray:
    """Each beat moved to the nearest onset within ``SNAP_HOPS`` hops; beats with none are dropped."""
    if attacks.size == 0:
        return np.zeros(0, dtype=np.int64)
    snapped = []
    for beat in beats:
        nearest = attacks[np.argmin(np.abs(attacks - beat))]
        if abs(int(nearest) - int(beat)) <= SNAP_HOPS * HOP:
            snapped.append(int(nearest))
    return np.unique(np.asarray(snapped, dtype=np.int64))


def _beats(
    onsets: _Onsets, rate: int, bpm: float | None = None, start_bpm: float = 120.0
) -> tuple[np.ndarray, float | None]:
    """Beat samples (snapped to onsets) and the tempo: fixed at ``bpm``, or measured.

    1. librosa's dynamic-programming tracker gives the beats (at ``bpm`` if given) from the
       onset strength of the mel bands below ``BEAT_FMAX_HZ``: over the full band, hi-hats
       and other bright off-beat sounds pull it onto the off-beats and to double time,
       while kicks, bass and snare bodies mark the beat. Each beat snaps to the nearest
       onset (full band) within ``SNAP_HOPS`` hops; beats with none are dropped.
    2. The tracker places its first beat poorly (often a beat's worth before or after the
       first hit), so the grid is extended back from the first snapped beat, one beat
       period at a time, while an onset lies there.
    3. The measured tempo: librosa's comes from an autocorrelation at frame resolution (a
       120 bpm click reads 120.19 at 44.1 kHz); it is refined to the mean interval between
       consecutive beats, keeping intervals within 25 % of the beat period.
    """
    import librosa

    # 1. Track and snap.
    tempo, frames = librosa.beat.beat_track(
        onset_envelope=onsets.beat_envelope, sr=rate, hop_length=HOP, start_bpm=start_bpm, bpm=bpm, trim=False
    )
    tempo = float(bpm if bpm is not None else np.atleast_1d(tempo)[0])
    if not math.isfinite(tempo) or tempo <= 0:
        return np.zeros(0, dtype=np.int64), None
    beats = _snap(np.asarray(frames, dtype=np.int64) * HOP - LEAD_HOPS * HOP, onsets.attacks)
    period = 60.0 * rate / tempo

    # 2. Extend the grid back to the earliest onset on it.
    earlier: list[int] = []
    while beats.size:
        first = earlier[0] if earlier else int(beats[0])
        back = _snap(np.asarray([round(first - period)]), onsets.attacks)
        if not back.size or back[0] >= first:
            break
        earlier.insert(0, int(back[0]))
    beats = np.concatenate([np.asarray(earlier, dtype=np.int64), beats])

    # 3. The tempo.
    if bpm is not None:
        return beats, float(bpm)
    intervals = np.diff(beats)
    kept = intervals[np.abs(intervals - period) <= 0.25 * period]
    return beats, (60.0 * rate / float(kept.mean()) if kept.size else None)


def beat_grid(samples: np.ndarray, rate: int, top_db: float = TOP_DB) -> tuple[np.ndarray, float | None]:
    """The beats of a clip (sample positions, ascending) and its tempo in bpm, as the slicer finds them.

    librosa's beat tracker on the onsets (see :func:`slice_pack`, step 3); no steady beat (no
    onset, or a tempo outside [20, 400] bpm): no beats and None. A music video's shots are
    snapped to the bars laid on these beats.

    Args:
        samples: float32 ``[channels, samples]``.
        rate: its sample rate in Hz.
    """
    array = np.asarray(samples, dtype=np.float32)
    if array.size == 0 or is_silent(array):
        return np.zeros(0, dtype=np.int64), None
    x = _check_audio(array, rate).samples
    mono, level = _mono(x), _level(x)
    onsets = _onsets(mono, level, rate, _threshold(level, top_db))
    if onsets.attacks.size == 0:
        return np.zeros(0, dtype=np.int64), None
    beats, tempo = _beats(onsets, rate)
    if tempo is None or not BPM_RANGE[0] <= tempo <= BPM_RANGE[1] or not beats.size:
        return np.zeros(0, dtype=np.int64), None
    return beats, tempo


def estimate_key(samples: np.ndarray, rate: int) -> KeyEstimate:
    """The key of ``[channels, samples]`` audio by Krumhansl–Schmuckler on librosa's CQT chroma.

    The chroma (tuning fixed at A440) is summed over the clip and correlated with the
    Krumhansl–Kessler major and minor profiles in all 12 rotations; the best correlation
    wins. A strength under about 0.5 means the clip has no clear key (drums, noise).

    Example:
        >>> t = np.arange(44100) / 44100
        >>> chord = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 261.63, 329.63))  # A C E
        >>> estimate_key(chord[None].astype(np.float32), 44100).key  # doctest: +SKIP
        'A minor'
    """
    x = _check_audio(samples, rate).samples
    return _key(_chroma(_mono(x), rate).sum(axis=1))


def _chroma(mono: np.ndarray, rate: int) -> np.ndarray:
    """librosa's CQT chroma ``[12, frames]`` (one frame per ``HOP`` samples), tuning fixed at A440."""
    import librosa

    with warnings.catch_warnings():
        # A clip shorter than a low octave's CQT filter gets a coarser chroma there; say nothing.
        warnings.filterwarnings("ignore", message="n_fft=.* is too large", category=UserWarning)
        return librosa.feature.chroma_cqt(y=mono, sr=rate, hop_length=HOP, tuning=0.0, norm=None)


def _key(profile: np.ndarray) -> KeyEstimate:
    """The best of the 24 rotated Krumhansl–Kessler profiles for a 12-bin chroma ``profile``."""
    profile = profile.astype(np.float64)
    best: tuple[float, str] | None = None
    for mode, template in (("major", MAJOR_PROFILE), ("minor", MINOR_PROFILE)):
        for tonic in range(12):
            r = _pearson(profile, np.roll(template, tonic))
            if best is None or r > best[0]:
                best = (r, f"{NOTES[tonic]} {mode}")
    assert best is not None
    return KeyEstimate(key=best[1], strength=best[0])


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / denominator if denominator > 0 else 0.0


# --- One-shots and sound effects -----------------------------------------------------------


def _fade_out(x: np.ndarray, length: int) -> np.ndarray:
    """A raised-cosine fade over the last ``length`` samples, ending at exactly zero."""
    length = min(length, x.shape[1] // 2)
    if length > 0:
        ramp = 0.5 * (1 + np.cos(np.pi * np.arange(1, length + 1) / length))
        x[:, -length:] *= ramp.astype(np.float32)
    return x


def _trim_end(level: np.ndarray, start: int, end: int, threshold: float) -> int:
    """``end`` moved back to just after the last sample at or above ``threshold``."""
    above = np.flatnonzero(level[start:end] >= threshold)
    return start + int(above[-1]) + 1 if above.size else end


def one_shot(
    samples: np.ndarray,
    rate: int,
    max_s: float = ONE_SHOT_S,
    peak_dbfs: float = ONE_SHOT_PEAK_DBFS,
    fade_out_s: float = FADE_OUT_S,
    top_db: float = TOP_DB,
) -> np.ndarray:
    """A one-shot: from its onset, at most ``max_s`` long, faded out, peak-normalised.

    1. The start is the first onset at least half as strong (librosa's onset strength) as
       the strongest, so a quiet noise floor or blip before the sound does not count. Out of
       silence it is the first sample at or above the silence threshold (``top_db`` below
       the peak): leading silence is gone and the cut steps by less than the threshold.
       Audio with no onset starts at its first such sample.
    2. The end is ``max_s`` after the start, or the last sample above the threshold if sooner.
    3. A raised-cosine fade of ``fade_out_s`` ends it at zero; then the peak is scaled to
       ``peak_dbfs`` (-1 dBFS: headroom for a sampler's interpolation).

    Args:
        samples: float32 ``[channels, samples]``.
        rate: its sample rate in Hz.
        max_s: the longest one-shot, in (0, 30] seconds.
        peak_dbfs: the peak after normalisation, in [-60, 0] dBFS.
        fade_out_s: the fade at the end, in [0, 1] seconds.
        top_db: silence is more than this many dB below the peak, in [10, 120].

    Returns:
        float32 ``[channels, samples]`` at ``rate``.

    Example:
        >>> t = np.arange(22050) / 44100
        >>> hit = np.concatenate([np.zeros(4410), np.exp(-t * 30) * np.cos(2 * np.pi * 200 * t)])
        >>> shot = one_shot(hit[None].astype(np.float32), 44100)
        >>> round(peak_dbfs(shot), 3)
        -1.0
    """
    # 1. Check inputs.
    x = _check_audio(samples, rate).samples
    max_s = _check_seconds("max_s", max_s, MAX_ONE_SHOT_S, "a one-shot length")
    peak_dbfs = _check_range("peak_dbfs", peak_dbfs, -60, 0, "dBFS", "Pick a peak at or below full scale.")
    fade_out_s = _check_range("fade_out_s", fade_out_s, 0, 1, "seconds", "The default is 0.01.")
    top_db = _check_range("top_db", top_db, 10, 120, "dB", "The default is 60.")

    # 2. Find the start: the first strong onset, to the sample.
    level = _level(x)
    threshold = _threshold(level, top_db)
    onsets = _onsets(_mono(x), level, rate, threshold)
    strong = onsets.attacks[onsets.strengths >= STRONG_ONSET * onsets.strengths.max(initial=0.0)]
    start = int(strong[0]) if strong.size else int(np.flatnonzero(level >= threshold)[0])

    # 3. Find the end, fade, normalise.
    end = _trim_end(level, start, min(x.shape[1], start + round(max_s * rate)), threshold)
    shot = _fade_out(x[:, start:end].copy(), round(fade_out_s * rate))
    return _normalise_peak(shot, peak_dbfs)


def _normalise_peak(x: np.ndarray, peak_dbfs: float) -> np.ndarray:
    peak = float(np.max(np.abs(x)))
    if peak == 0:
        return x
    return (x.astype(np.float64) * (10 ** (peak_dbfs / 20) / peak)).astype(np.float32)


def sfx(samples: np.ndarray, rate: int, top_db: float = TOP_DB) -> np.ndarray:
    """A sound effect: the audio trimmed of silence at both ends, to the sample, levels untouched.

    Silence is more than ``top_db`` below the peak (largest over channels); the result runs
    from the first to the last sample at or above that. (librosa.effects.trim does the same
    in 2048-sample frames, leaving up to a frame of silence.)

    Args:
        samples: float32 ``[channels, samples]``.
        rate: its sample rate in Hz.
        top_db: in [10, 120] dB.

    Returns:
        float32 ``[channels, samples]``.

    Example:
        >>> sfx(np.array([[0.0, 0.0, 0.5, -0.25, 0.0]], np.float32), 8000)
        array([[ 0.5 , -0.25]], dtype=float32)
    """
    x = _check_audio(samples, rate).samples
    top_db = _check_range("top_db", top_db, 10, 120, "dB", "The default is 60.")
    level = _level(x)
    above = np.flatnonzero(level >= _threshold(level, top_db))
    return x[:, int(above[0]) : int(above[-1]) + 1].copy()


# --- Loops ---------------------------------------------------------------------------------


def seam_jump_ratio(loop_samples: np.ndarray) -> float:
    """The wrap's step (last sample to first) over the RMS sample-to-sample step of ``[channels, samples]``."""
    x = loop_samples.astype(np.float64)
    typical = math.sqrt(float(np.mean(np.diff(x, axis=1) ** 2)))
    jump = float(np.max(np.abs(x[:, 0] - x[:, -1])))
    if typical == 0:
        return 0.0 if jump == 0 else math.inf
    return jump / typical


def _hf_energy(x: np.ndarray) -> float:
    """Hann-weighted energy of the second difference (a +12 dB/octave high-pass) of ``[channels, samples]``."""
    curvature = np.diff(x.astype(np.float64), n=2, axis=1)
    return float((np.hanning(curvature.shape[1]) * curvature**2).sum())


def _hf_floor(plain: np.ndarray, half: int) -> float:
    """``SEAM_FLOOR_DB`` below the mean high-pass energy of the loop's windows (what counts as quiet)."""
    count = plain.shape[1] // (2 * half)
    windows = plain[:, : count * 2 * half].reshape(plain.shape[0], count, 2 * half).transpose(1, 0, 2)
    mean = float(np.mean([_hf_energy(w) for w in windows])) if count else 0.0
    return mean * 10 ** (SEAM_FLOOR_DB / 10) + 1e-30


def _seam_hf_db(loop_samples: np.ndarray, reference: np.ndarray, half: int, floor: float) -> float:
    """High-pass energy across the wrap relative to ``reference`` (the source across the cut), in dB.

    ``floor`` is added to both, so a wrap in a stretch far quieter (in the high-pass) than the
    rest of the loop does not turn inaudible differences into large ratios.
    """
    across = np.concatenate([loop_samples[:, -half:], loop_samples[:, :half]], axis=1)
    return 10 * math.log10((_hf_energy(across) + floor) / (_hf_energy(reference) + floor))


def _loop_at(
    x: np.ndarray, mono: np.ndarray, beat: int, length: int, fade: int, reach: int, rate: int
) -> tuple[int, np.ndarray, float, float, float, float]:
    """Cut ``length`` samples near ``beat`` and fold the next ``fade`` samples into the head.

    The start moves at most ``reach`` samples from the beat, to where the loop's first and
    last samples are quietest (``|mono[s]| + |mono[s + length]|``; nearest the beat on ties).
    The fold: ``head[i] = x[s + i] sin(πi/2F) + x[s + length + i] cos(πi/2F)``, so the wrap
    goes from ``x[s + length - 1]`` to ``x[s + length]``, as the source does.

    Returns:
        the start, the loop ``[channels, length]``, the seam jump ratio before and after the
        fold, the seam high-pass energy (dB) before and after.
    """
    n = x.shape[1]
    candidates = np.arange(max(0, beat - reach), min(beat + reach, n - length - fade) + 1)
    cost = np.abs(mono[candidates]) + np.abs(mono[candidates + length])
    start = int(candidates[np.lexsort((np.abs(candidates - beat), cost))[0]])

    plain = x[:, start : start + length]
    t = np.arange(fade) / fade * (np.pi / 2)
    y = plain.copy()
    y[:, :fade] = plain[:, :fade] * np.sin(t) + x[:, start + length : start + length + fade] * np.cos(t)
    y = y.astype(np.float32)

    half = min(round(SEAM_WINDOW_S * rate), fade, length // 2)
    reference = x[:, start + length - half : start + length + half]
    floor = _hf_floor(plain, half)
    return (
        start,
        y,
        seam_jump_ratio(plain),
        seam_jump_ratio(y),
        _seam_hf_db(plain, reference, half, floor),
        _seam_hf_db(y, reference, half, floor),
    )


def loop(
    samples: np.ndarray,
    rate: int,
    bpm: float,
    bars: int,
    beats_per_bar: int = 4,
    crossfade_s: float = CROSSFADE_S,
) -> Loop:
    """A seamless loop of exactly ``bars`` bars at ``bpm``, cut on the beat grid.

    1. The length is :func:`loop_length_samples` (rounded once; halves up).
    2. librosa tracks beats at the requested tempo; each beat snaps to the onset under it.
       The loop starts on the first beat that leaves room for the loop and the crossfade
       (generated music usually begins on a downbeat), moved at most 2 ms to where the
       audio is quietest at both ends. With no such beat it starts at the audio's start.
    3. The ``crossfade_s`` of audio after the loop's end is folded into its head with an
       equal-power (sine/cosine) crossfade, so the wrap continues as the source did.
    4. The facts give the measured tempo (librosa, unconstrained, refined on onsets), the cut
       and the seam before and after the fold (see :class:`LoopFacts`).

    Args:
        samples: float32 ``[channels, samples]``, at least the loop plus the crossfade long;
            generate :func:`required_length_s` seconds.
        rate: its sample rate in Hz.
        bpm: the tempo, in [20, 400].
        bars: the loop's length in bars, in [1, 64].
        beats_per_bar: in [1, 16] (4 for 4/4).
        crossfade_s: the folded tail, in [0.001, 0.5] seconds and at most half the loop.

    Returns:
        a :class:`Loop`: ``samples`` float32 ``[channels, length_samples]`` and its facts.

    Example:
        >>> audio = np.random.default_rng(0).normal(0, 0.1, (2, 44100 * 5)).astype(np.float32)
        >>> loop(audio, 44100, bpm=120, bars=2).samples.shape
        (2, 176400)
    """
    # 1. Check inputs.
    x = _check_audio(samples, rate).samples
    bpm, bars = _check_bpm(bpm), _check_bars(bars)
    beats_per_bar = _check_beats_per_bar(beats_per_bar)
    length = loop_length_samples(bpm, bars, beats_per_bar, rate)
    crossfade_s = _check_range(
        "crossfade_s", crossfade_s, 0.001, min(0.5, length / rate / 2), "seconds", "The default is 0.02."
    )
    fade = max(1, round(crossfade_s * rate))
    n = x.shape[1]
    if n < length + fade:
        need = required_length_s(bpm, bars, beats_per_bar, MARGIN_BEATS, crossfade_s)
        raise AudioError(
            f"audio is {n / rate:.3f} s, but a {bars}-bar loop at {bpm:g} bpm ({length / rate:.3f} s) "
            f"and its {crossfade_s:g} s crossfade need {(length + fade) / rate:.3f} s. "
            f"Give at least {need:.3f} s (required_length_s)."
        )

    # 2. Analyse: onsets, the beat grid at the requested tempo, the tempo the audio has.
    mono, level = _mono(x), _level(x)
    onsets = _onsets(mono, level, rate, _threshold(level, TOP_DB))
    grid, _ = _beats(onsets, rate, bpm=bpm)
    free_beats, measured = _beats(onsets, rate, start_bpm=bpm)

    # 3. Cut on the first beat with room, fold the tail in.
    reach = round(ZERO_CROSSING_S * rate)
    fits = [int(b) for b in grid if b - reach >= 0 and b + reach + length + fade <= n]
    beat = fits[0] if fits else 0
    start, y, before, after, hf_before, hf_after = _loop_at(x, mono, beat, length, fade, reach, rate)

    facts = LoopFacts(
        bpm=bpm,
        bars=bars,
        beats_per_bar=beats_per_bar,
        length_samples=length,
        duration_s=length / rate,
        measured_bpm=measured,
        beats_found=int(free_beats.size),
        start_sample=start,
        end_sample=start + length,
        start_s=start / rate,
        on_beat=bool(fits),
        crossfade_samples=fade,
        seam_jump_ratio_before=before,
        seam_jump_ratio_after=after,
        seam_hf_db_before=hf_before,
        seam_hf_db_after=hf_after,
    )
    return Loop(samples=y, sample_rate=rate, facts=facts)


# --- Packs ---------------------------------------------------------------------------------


def _check_types(types) -> tuple[str, ...]:
    if isinstance(types, str):
        types = (types,)
    if not types:
        raise RequestError(
            f"types must name at least one of {', '.join(SLICE_TYPES)}, got {types!r}. Pick one or both."
        )
    return tuple(check_type(t, SLICE_TYPES, "types") for t in dict.fromkeys(types))


def _slice(
    y: np.ndarray,
    kind: str,
    index: int,
    start: int,
    end: int,
    rate: int,
    tempo: float | None,
    chroma: np.ndarray,
) -> Slice:
    """A slice and its facts; its key from the source's chroma frames under it (computed once)."""
    peak = peak_dbfs(y)
    frames = chroma[:, start // HOP : max(start // HOP + 1, -(-end // HOP))]
    key = None if is_silent(y) else _key(frames.sum(axis=1))
    return Slice(
        type=kind,
        index=index,
        samples=y,
        sample_rate=rate,
        start_s=start / rate,
        end_s=end / rate,
        peak_dbfs=peak if math.isfinite(peak) else None,
        loudness_lufs=loudness_lufs(y, rate),
        tempo_bpm=tempo,
        key=key.key if key else None,
        key_strength=key.strength if key else None,
    )


def slice_pack(
    samples: np.ndarray,
    rate: int,
    types: tuple[str, ...] = SLICE_TYPES,
    bpm: float | None = None,
    loop_bars: int = 1,
    max_one_shot_s: float = PACK_ONE_SHOT_S,
    crossfade_s: float = CROSSFADE_S,
    top_db: float = TOP_DB,
) -> Pack:
    """Cut any audio into one-shots at its onsets and loops at its bar boundaries (4/4).

    1. Onsets: librosa's, refined to the sample (see :func:`one_shot`). None is an error.
    2. One-shots: from each onset to the next (at most ``max_one_shot_s``), trailing
       silence trimmed, a 10 ms fade at the end, levels untouched. Slices under 20 ms are
       dropped (two onsets that close are one sound).
    3. Loops: librosa's beat tracker gives the beats and the tempo (refined on the onsets
       under its beats), or tracks at ``bpm`` when it is known (librosa's estimate can be
       half or double the tempo). Bars of 4 beats are laid from the first beat, and every
       ``loop_bars`` bars that fit (with the crossfade after them) become a loop, cut and
       folded as in :func:`loop`. No steady beat (no tempo in [20, 400] bpm): no loops.
    4. Each slice gets its place in the source, duration, peak, loudness (BS.1770 via
       harmonia.audio), tempo (loops: the grid they were cut on) and key (as
       :func:`estimate_key`, from the source's chroma frames under the slice, computed once).

    Args:
        samples: float32 ``[channels, samples]``.
        rate: its sample rate in Hz.
        types: which slices to cut: "one-shot", "loop" or both.
        bpm: the tempo if known, in [20, 400]; None: estimated.
        loop_bars: bars per loop, in [1, 64].
        max_one_shot_s: the longest one-shot, in (0, 30] seconds.
        crossfade_s: the folded tail of each loop, in [0.001, 0.5] seconds.
        top_db: silence is more than this many dB below the source's peak, in [10, 120].

    Returns:
        a :class:`Pack`; its ``to_json()`` is what ``pack.json`` holds.

    Example:
        >>> pack = slice_pack(drums, 44100)  # doctest: +SKIP
        >>> len(pack.one_shots), len(pack.loops), round(pack.tempo_bpm)  # doctest: +SKIP
        (16, 3, 120)
    """
    # 1. Check inputs.
    source = _check_audio(samples, rate)
    x = source.samples
    types = _check_types(types)
    bpm = None if bpm is None else _check_bpm(bpm)
    loop_bars = _check_bars(loop_bars, "loop_bars")
    max_one_shot_s = _check_seconds("max_one_shot_s", max_one_shot_s, MAX_ONE_SHOT_S, "a one-shot length")
    crossfade_s = _check_range("crossfade_s", crossfade_s, 0.001, 0.5, "seconds", "The default is 0.02.")
    top_db = _check_range("top_db", top_db, 10, 120, "dB", "The default is 60.")

    # 2. Onsets.
    n = x.shape[1]
    mono, level = _mono(x), _level(x)
    threshold = _threshold(level, top_db)
    onsets = _onsets(mono, level, rate, threshold)
    attacks = onsets.attacks
    if attacks.size == 0:
        raise AudioError(
            f"audio: no onsets found in {n / rate:.3f} s: librosa found no hit or note start to cut at. "
            "Give audio with distinct hits or notes, or cut a loop at a known bpm with loop()."
        )

    # 3. One-shots, onset to onset.
    chroma = _chroma(mono, rate)
    slices: list[Slice] = []
    if "one-shot" in types:
        ends = [*attacks[1:].tolist(), n]
        for start, next_start in zip(attacks.tolist(), ends):
            end = _trim_end(level, start, min(next_start, start + round(max_one_shot_s * rate)), threshold)
            if end - start < MIN_ONE_SHOT_S * rate:
                continue
            shot = _fade_out(x[:, start:end].copy(), round(FADE_OUT_S * rate))
            slices.append(_slice(shot, "one-shot", len(slices) + 1, start, end, rate, None, chroma))

    # 4. Loops, bar to bar from the first beat.
    beats, tempo = _beats(onsets, rate, bpm=bpm)
    if tempo is not None and not BPM_RANGE[0] <= tempo <= BPM_RANGE[1]:
        tempo = None
    if "loop" in types and tempo is not None and beats.size:
        length = loop_length_samples(tempo, loop_bars, 4, rate)
        fade = max(1, min(round(crossfade_s * rate), length // 2))
        reach = round(ZERO_CROSSING_S * rate)
        index = 0
        beat = int(beats[0])
        while beat + reach + length + fade <= n:
            start, y, *_ = _loop_at(x, mono, beat, length, fade, reach, rate)
            index += 1
            slices.append(_slice(y, "loop", index, start, start + length, rate, tempo, chroma))
            beat += length

    key = _key(chroma.sum(axis=1))
    return Pack(
        sample_rate=rate,
        channels=x.shape[0],
        source_sha256=source.sha256,
        source_duration_s=n / rate,
        onsets=int(attacks.size),
        tempo_bpm=tempo,
        key=key.key,
        key_strength=key.strength,
        slices=tuple(slices),
    )


def write_pack(pack: Pack, folder: str | os.PathLike[str], make_zip: bool = False) -> PackFiles:
    """Write a pack folder (``one-shots/NNN.wav``, ``loops/NNN.wav``, ``pack.json``) and optionally a zip.

    The folder is built beside its final place and renamed into it (an existing folder is
    replaced, never merged). WAVs are 32-bit float (exact; no PEAK chunk, so no write time);
    ``pack.json`` has sorted keys. The zip (``FOLDER.zip`` beside the folder) holds the same
    files under ``FOLDER/``, in sorted order, each stamped 1980-01-01 00:00 with mode 0644:
    the same pack gives the same zip bytes. Without ``make_zip`` an older ``FOLDER.zip`` is
    removed, so a folder and a zip beside it always hold the same pack.

    Args:
        pack: from :func:`slice_pack`.
        folder: the pack folder to write.
        make_zip: also write ``FOLDER.zip``.

    Example:
        >>> write_pack(slice_pack(drums, 44100), "packs/drums", make_zip=True).zip_path  # doctest: +SKIP
        PosixPath('packs/drums.zip')
    """
    folder = Path(folder)
    staging = staging_dir(folder.parent, folder.name)
    try:
        for piece in pack.slices:
            (staging / piece.file).parent.mkdir(exist_ok=True)
            write_audio(staging / piece.file, piece.samples, piece.sample_rate, "wav")
        text = json.dumps(pack.to_json(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        (staging / PACK_JSON).write_text(text, encoding="utf-8")
        install(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files = tuple(sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()))
    zip_path = _write_zip(folder, files) if make_zip else None
    if not make_zip:
        folder.with_name(folder.name + ".zip").unlink(missing_ok=True)
    return PackFiles(folder=folder, files=files, zip_path=zip_path)


def _write_zip(folder: Path, files: tuple[str, ...]) -> Path:
    target = folder.with_name(folder.name + ".zip")
    partial = folder.with_name(f".{folder.name}.zip.partial")
    with zipfile.ZipFile(partial, "w") as archive:
        for name in files:
            info = zipfile.ZipInfo(f"{folder.name}/{name}", date_time=ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # Unix, whatever the platform writing it
            info.external_attr = 0o100644 << 16
            archive.writestr(info, (folder / name).read_bytes(), compresslevel=9)
    os.replace(partial, target)
    return target


# --- Sample requests: what every sample engine checks and how it shapes a take -------------
DEFAULT_DURATION_S = {"one-shot": 4.0, "sfx": 10.0}  # what is generated when duration_s is None
DEFAULT_BARS = 1
DEFAULT_BEATS_PER_BAR = 4


def longest_loop_bars(bpm: float, beats_per_bar: int, max_s: float) -> int:
    """The most bars at ``bpm`` whose required length fits in ``max_s`` seconds (0 if none).

    Example:
        >>> longest_loop_bars(120, 4, 5.944)
        2
    """
    return max(0, math.floor(((max_s - CROSSFADE_S) * bpm / 60.0 - MARGIN_BEATS) / beats_per_bar + 1e-9))


def check_sample_request(
    r: SampleRequest, sample_rate: int, max_duration_s: float, name: str
) -> SampleRequest:
    """Check every parameter of a sample request for a model that makes at most ``max_duration_s``
    seconds at ``sample_rate``; return it as it will run (seed drawn, length or grid filled in,
    init read). ``name`` is the model's, for the messages. The sample engines (stable-audio,
    audiogen) share it, so a request means the same to both.
    """
    from harmonia.audio import read_audio
    from harmonia.engines.base import SEED_LIMIT, check_seed, choose_seed
    from harmonia.requests import check_limits, check_prompt_texts

    # 1. Text.
    if not isinstance(r.prompts, tuple) or not r.prompts:
        raise RequestError("prompts must be a non-empty list of strings: give at least one prompt.")
    check_prompt_texts(r.prompts, r.negative_prompt, "describe the sound in a few words")

    # 2. Ranges, the type, the seed.
    check_limits(r)
    check_type(r.type)
    seed = choose_seed() if r.seed is None else check_seed(r.seed)
    if seed + r.takes > SEED_LIMIT:
        raise RequestError(
            f"seed {seed} + {r.takes} takes passes 2**63 (take i uses seed + i); give a seed below {SEED_LIMIT - r.takes}."
        )

    # 3. The length: a loop's grid, or a duration within the model's limit.
    longest = max_duration_s
    if r.type == "loop":
        if r.bpm is None:
            raise RequestError(
                "a loop needs a tempo: give bpm (e.g. --bpm 120) and, if not 1, bars (--bars 2)."
            )
        bars = DEFAULT_BARS if r.bars is None else r.bars
        beats = DEFAULT_BEATS_PER_BAR if r.beats_per_bar is None else r.beats_per_bar
        need = required_length_s(r.bpm, bars, beats)
        if need > longest:
            fit = longest_loop_bars(r.bpm, beats, longest)
            loop_s = loop_length_samples(r.bpm, bars, beats, sample_rate) / sample_rate
            if fit >= 1:
                advice = (
                    f"at {r.bpm:g} bpm the longest loop is {fit} bar{'s' if fit > 1 else ''} of {beats} beats "
                    f"({loop_length_samples(r.bpm, fit, beats, sample_rate) / sample_rate:.2f} s). "
                    "Ask for fewer bars or a faster tempo."
                )
            else:
                slowest = (beats + MARGIN_BEATS) * 60.0 / (longest - CROSSFADE_S)
                advice = f"even 1 bar of {beats} beats does not fit: use at least {math.ceil(slowest)} bpm."
            raise RequestError(
                f"a {bars}-bar loop at {r.bpm:g} bpm is {loop_s:.2f} s and needs {need:.2f} s of audio "
                f"({MARGIN_BEATS:g} more beats to find the first beat, and the crossfade), but model '{name}' "
                f"generates at most {longest:.2f} s; {advice}"
            )
        r = replace(r, bars=bars, beats_per_bar=beats, duration_s=None)  # its length is the grid's
    else:
        # bpm, bars and beats_per_bar shape loops only; a default for loops (params.yaml's samples:)
        # must not stop a one-shot, so they are dropped here and recorded as None.
        r = replace(r, bpm=None, bars=None, beats_per_bar=None)
        duration = min(DEFAULT_DURATION_S[r.type], longest) if r.duration_s is None else r.duration_s
        if duration > longest:
            raise RequestError(
                f"duration_s is {duration:g} s but model '{name}' generates at most {longest:.2f} s; "
                f"ask for at most {math.floor(longest * 100) / 100:g} s."
            )
        r = replace(r, duration_s=float(duration))

    # 4. The init clip: readable, not empty, audible.
    init = None
    if r.init is not None:
        init = read_audio(r.init, "init")  # unreadable, empty, NaN: one sentence each
        if is_silent(init.samples):
            raise AudioError(
                f"init: {init.source or 'the array'} is silent (peak below -60 dBFS); a variation needs audible "
                "audio. Give another clip or leave init out."
            )
    return replace(r, seed=seed, init=init)


def generated_seconds(request: SampleRequest) -> float:
    """Seconds to generate for a checked request: a loop's required length, else duration_s."""
    if request.type == "loop":
        return required_length_s(request.bpm, request.bars, request.beats_per_bar)
    return float(request.duration_s)


def shape_take(raw: np.ndarray, rate: int, request: SampleRequest, seconds: float) -> tuple[np.ndarray, dict]:
    """A generated clip ``[channels, samples]`` shaped by the request's type, and the facts the
    manifest keeps of it.

    A silent clip (peak under -60 dBFS: nothing to trim or cut on) is kept as generated (a
    loop: its first ``length`` samples) and marked ``silent``.
    """
    silent = is_silent(raw)
    peak = peak_dbfs(raw)
    facts: dict[str, Any] = {"silent": silent, "peak_dbfs": round(peak, 6) if math.isfinite(peak) else None}
    if request.type == "loop":
        length = loop_length_samples(request.bpm, request.bars, request.beats_per_bar, rate)
        if silent:
            return raw[:, :length].copy(), {**facts, "loop": None}
        cut = loop(raw, rate, request.bpm, request.bars, request.beats_per_bar)
        return cut.samples, {**facts, "loop": cut.facts.to_json()}
    if silent:
        return raw, facts
    if request.type == "one-shot":
        return one_shot(raw, rate, max_s=min(ONE_SHOT_S, seconds)), facts
    return sfx(raw, rate), facts


def warm_numba_cache(rate: int = 44100) -> None:
    """Compile librosa's numba functions that Harmonia calls, once, in this one process.

    librosa caches its numba functions on disk (``cache=True``), and two processes compiling
    the same ``guvectorize`` function into that cache at once can leave it with parts from
    each that do not match: the next process to load them segfaults (numba issue #10128, seen
    in librosa's ``peak_pick`` and ``__last_beat`` when test workers and batch workers started
    together on a fresh environment). Run once after installing (``make setup`` does), every
    later process only reads the cache. The analysis here is a slice and a loop of a click
    track: the calls, and argument types, Harmonia itself makes.
    """
    seconds = 60 / 120
    y = np.zeros(round(12 * seconds * rate) + rate, dtype=np.float64)
    t = np.arange(round(0.15 * rate)) / rate
    click = 0.5 * np.cos(2 * np.pi * 180.0 * t) * np.exp(-t * 46.0)
    for k in range(12):
        start = round((0.25 + k * seconds) * rate)
        y[start : start + len(click)] += click
    samples = y[None].astype(np.float32)
    loop(samples, rate, 120, 1)
    slice_pack(samples, rate)
    beat_grid(samples, rate)
