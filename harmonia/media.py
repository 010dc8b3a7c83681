"""Takes of media and the one writer per media type.

An engine's result is a tuple of takes: :class:`AudioTake` (float32 ``[channels, samples]``
and a rate) or :class:`TextTake`. ``write_take`` writes a take into an artifact folder the
one way its media type is written (audio: WAV or FLAC, optional loudness target, a
waveform/spectrogram picture; text: UTF-8) and returns its :class:`OutputRecord`. The
generation path never branches on a kind, only on the media type of a take.

This module knows samples, text and files; it knows nothing about engines or manifests'
other fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harmonia.audio import FORMATS, facts, normalize_loudness, write_audio
from harmonia.errors import RequestError
from harmonia.hashing import sha256_file
from harmonia.manifest import OutputRecord, OutputSettings

LUFS_RANGE = (-70.0, 0.0)
WRITER_VERSION = 1  # bump when a change here changes written bytes (it is part of every artifact id)


@dataclass(frozen=True, eq=False)
class AudioTake:
    """One audio take: float32 ``[channels, samples]`` at ``sample_rate``."""

    samples: np.ndarray
    sample_rate: int
    prompt: str | None = None

    @property
    def duration_s(self) -> float:
        return self.samples.shape[-1] / self.sample_rate


@dataclass(frozen=True)
class TextTake:
    """One text take (a prompt, lyrics, a shot list as JSON)."""

    text: str
    prompt: str | None = None
    suffix: str = ".txt"  # ".json" for structured text

    @property
    def duration_s(self) -> None:
        return None


Take = AudioTake | TextTake


def check_output(settings: OutputSettings) -> OutputSettings:
    """The format and loudness target are ones Harmonia writes (RequestError otherwise).

    The target comes back as a float, so -14 and -14.0 name the same artifact.
    """
    if settings.format not in FORMATS:
        raise RequestError(f"format must be one of {', '.join(FORMATS)}, got {settings.format!r}.")
    target = settings.normalize_lufs
    if target is not None:
        low, high = LUFS_RANGE
        if (
            not isinstance(target, int | float)
            or isinstance(target, bool)
            or not math.isfinite(target)
            or not low <= target <= high
        ):
            raise RequestError(
                f"normalize_lufs must be in [{low:g}, {high:g}] LUFS (e.g. -14), got {target!r}."
            )
        return OutputSettings(settings.format, float(target))
    return settings


def write_take(
    folder: Path, index: int, take: Take, settings: OutputSettings, previews: bool
) -> OutputRecord:
    """Write ``take-INDEX.<ext>`` (and its picture) into ``folder``; return its record."""
    if isinstance(take, AudioTake):
        return _write_audio(folder, f"take-{index}", take, settings, previews)
    if isinstance(take, TextTake):
        path = folder / f"take-{index}{take.suffix}"
        path.write_text(take.text, encoding="utf-8")
        return OutputRecord(path.name, sha256_file(path), "text", take.prompt, characters=len(take.text))
    raise TypeError(f"no writer for a {type(take).__name__}")


def _write_audio(
    folder: Path, stem: str, take: AudioTake, settings: OutputSettings, previews: bool
) -> OutputRecord:
    samples = take.samples
    if settings.normalize_lufs is not None:
        samples = normalize_loudness(samples, take.sample_rate, settings.normalize_lufs)
    path = write_audio(folder / f"{stem}.{settings.format}", samples, take.sample_rate, settings.format)
    preview = None
    if previews:
        from harmonia.plots import save_audio_figure

        preview = save_audio_figure(folder / f"{stem}.png", samples, take.sample_rate, take.prompt or "").name
    return OutputRecord(
        path.name, sha256_file(path), "audio", take.prompt, preview, **facts(samples, take.sample_rate)
    )
