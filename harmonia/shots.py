"""Shot lists of a music video: read, checked against the track, snapped to its bars, laid on frames.

A shot list is JSON, a list of ``{"start": s, "end": s, "prompt": text}`` (what
``harmonia write shots`` writes): sorted, the first starting at 0, each starting where the
previous ends, the last ending at the track's end (within :data:`END_TOLERANCE_S`; it is
then moved to the end exactly). :func:`snap_to_bars` moves each cut between two shots to the
nearest bar line of the track (librosa's beat tracking through :func:`harmonia.samples.beat_grid`,
4 beats to the bar from the first beat), unless that would leave a shot shorter than
:data:`MIN_SNAPPED_S`; :func:`frame_plan` turns the cuts into frame counts whose sum is the
track's length in frames, so the video lasts as long as the track to within half a frame.

This module knows shot lists and timing; it knows nothing about models or artifacts.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harmonia.errors import RequestError
from harmonia.requests import MAX_PROMPT_CHARS, Shot

END_TOLERANCE_S = 0.5  # the last shot may end this far from the track's end (as the text engine's check)
JOIN_TOLERANCE_S = 1e-6  # a cut: one shot's end and the next's start agree to this
MIN_SNAPPED_S = 0.5  # a cut moves to a bar line only if no shot becomes shorter than this
BEATS_PER_BAR = 4
MAX_SHOTS = 500


@dataclass(frozen=True)
class Timeline:
    """The shots as they will be cut: snapped times, frames per shot, and how the track was read."""

    shots: tuple[Shot, ...]  # snapped: the first starts at 0, the last ends at the track's end
    frames: tuple[int, ...]  # frames per shot; their sum is round(duration_s × fps)
    snapped: tuple[str, ...]  # per cut between shots: "bar" (moved to a bar line) or "kept"
    tempo_bpm: float | None  # None: no steady beat found (the cuts are kept as given)
    bar_s: tuple[float, ...]  # the bar lines found in the track, seconds

    def to_json(self) -> dict[str, Any]:
        return {
            "tempo_bpm": None if self.tempo_bpm is None else round(self.tempo_bpm, 6),
            "bars": len(self.bar_s),
            "cuts": list(self.snapped),
        }


def read_shots(value: Any) -> tuple[Shot, ...]:
    """A shot list from a JSON file path, JSON text's parsed list, or Shots; checked for form only.

    Raises RequestError naming the shot and the field for anything that is not a shot list.
    """
    if isinstance(value, str | Path):
        path = Path(value)
        if not path.is_file():
            raise RequestError(
                f"shots: {value} is neither a file nor an artifact; give a JSON shot list file "
                "or the id of a shot list artifact (harmonia write shots)."
            )
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise RequestError(
                f"shots: {value} is not JSON ({exc}); give a list of {{start, end, prompt}} objects."
            ) from None
    if not isinstance(value, list | tuple) or not value:
        raise RequestError(
            f"shots must be a non-empty list of {{start, end, prompt}} objects, got {value!r:.80}."
        )
    if len(value) > MAX_SHOTS:
        raise RequestError(f"shots lists {len(value)} shots; the limit is {MAX_SHOTS}.")
    shots = []
    for i, item in enumerate(value):
        if isinstance(item, Shot):
            item = item.to_json()
        if not isinstance(item, dict) or set(item) != {"start", "end", "prompt"}:
            keys = sorted(item) if isinstance(item, dict) else type(item).__name__
            raise RequestError(f"shot {i} must have exactly start, end and prompt, got {keys}.")
        for name in ("start", "end"):
            x = item[name]
            if not isinstance(x, int | float) or isinstance(x, bool) or not math.isfinite(x) or x < 0:
                raise RequestError(f"shot {i}: {name} must be a number of seconds >= 0, got {x!r}.")
        prompt = item["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise RequestError(f"shot {i}: the prompt is empty; say what the shot shows.")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise RequestError(
                f"shot {i}: the prompt has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}."
            )
        shots.append(Shot(float(item["start"]), float(item["end"]), prompt.strip()))
    return tuple(shots)


def check_timing(shots: tuple[Shot, ...], duration_s: float, fps: float) -> tuple[Shot, ...]:
    """The shots cover the track end to end: no overlap, no gap, none past the end, none empty.

    Returns them with the last end set to the track's end exactly.
    """
    previous = 0.0
    for i, shot in enumerate(shots):
        if shot.end_s <= shot.start_s:
            raise RequestError(
                f"shot {i} ends at {shot.end_s:g} s, not after its start at {shot.start_s:g} s."
            )
        if shot.start_s < previous - JOIN_TOLERANCE_S:
            raise RequestError(
                f"shot {i} starts at {shot.start_s:g} s, before shot {i - 1} ends at {previous:g} s: the shots "
                "overlap. Start each shot where the previous one ends."
            )
        if shot.start_s > previous + JOIN_TOLERANCE_S:
            where = f"shot {i - 1} ends at {previous:g} s" if i else "the track starts at 0 s"
            raise RequestError(
                f"shot {i} starts at {shot.start_s:g} s but {where}: a gap with no picture. Start each shot "
                "where the previous one ends (the first at 0)."
            )
        if shot.end_s > duration_s + END_TOLERANCE_S:
            raise RequestError(
                f"shot {i} ends at {shot.end_s:g} s, past the track's end ({duration_s:.2f} s). End the last "
                f"shot at {duration_s:.2f} s."
            )
        if (shot.end_s - shot.start_s) * fps < 1:
            raise RequestError(
                f"shot {i} lasts {shot.end_s - shot.start_s:g} s, less than one frame at {fps:g} fps. Make it longer."
            )
        previous = shot.end_s
    if previous < duration_s - END_TOLERANCE_S:
        raise RequestError(
            f"the shots end at {previous:g} s but the track lasts {duration_s:.2f} s: a gap with no picture at "
            f"the end. End the last shot at {duration_s:.2f} s."
        )
    last = shots[-1]
    return (*shots[:-1], Shot(last.start_s, float(duration_s), last.prompt))


def bar_lines(samples: np.ndarray, rate: int) -> tuple[tuple[float, ...], float | None]:
    """Bar lines of a track in seconds (every 4th beat from the first), and its tempo (None: no beat)."""
    from harmonia.samples import beat_grid

    beats, tempo = beat_grid(samples, rate)
    if tempo is None or beats.size == 0:
        return (), None
    bar = BEATS_PER_BAR * 60.0 / tempo
    duration = samples.shape[-1] / rate
    first = float(beats[0]) / rate
    count = int((duration - first) // bar) + 1
    return tuple(round(first + k * bar, 6) for k in range(count) if first + k * bar < duration), tempo


def snap_to_bars(
    shots: tuple[Shot, ...], bars: tuple[float, ...]
) -> tuple[tuple[Shot, ...], tuple[str, ...]]:
    """Each cut between two shots moved to its nearest bar line, if no shot gets shorter than
    :data:`MIN_SNAPPED_S` (the next cut is still where it was given); otherwise kept."""
    cuts = [s.end_s for s in shots[:-1]]
    end = shots[-1].end_s
    moved, how, previous = [], [], 0.0
    for i, cut in enumerate(cuts):
        following = cuts[i + 1] if i + 1 < len(cuts) else end
        nearest = min(bars, key=lambda b: abs(b - cut)) if bars else None
        if (
            nearest is not None
            and nearest - previous >= MIN_SNAPPED_S
            and following - nearest >= MIN_SNAPPED_S
        ):
            moved.append(nearest)
            how.append("bar")
        else:
            moved.append(cut)
            how.append("kept")
        previous = moved[-1]
    edges = [0.0, *moved, end]
    snapped = tuple(Shot(edges[i], edges[i + 1], s.prompt) for i, s in enumerate(shots))
    return snapped, tuple(how)


def frame_plan(shots: tuple[Shot, ...], fps: float) -> tuple[int, ...]:
    """Frames per shot: the cuts rounded to frames; the sum is round(track duration × fps)."""
    edges = [0, *(round(s.end_s * fps) for s in shots)]
    counts = tuple(b - a for a, b in itertools.pairwise(edges))
    short = next((i for i, n in enumerate(counts) if n < 1), None)
    if short is not None:
        s = shots[short]
        raise RequestError(
            f"shot {short} ({s.start_s:g}-{s.end_s:g} s) gets no frame at {fps:g} fps after its cuts are "
            "rounded to frames. Make it longer or raise --fps."
        )
    return counts


def timeline(shots: tuple[Shot, ...], samples: np.ndarray, rate: int, fps: float) -> Timeline:
    """Check the shots against the track, snap their cuts to its bars, and lay them on frames."""
    duration = samples.shape[-1] / rate
    given = check_timing(shots, duration, fps)
    bars, tempo = bar_lines(samples, rate)
    snapped, how = snap_to_bars(given, bars)
    return Timeline(snapped, frame_plan(snapped, fps), how, tempo, bars)
