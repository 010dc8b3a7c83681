"""Takes of media and the one writer per media type.

An engine's result is a tuple of takes: :class:`AudioTake` (float32 ``[channels, samples]``
and a rate), :class:`TextTake`, or :class:`FileTake` (bytes written as they are under a
relative path: a sample pack's WAVs, its pack.json and zip). ``write_take`` writes a take into an artifact folder the
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


@dataclass(frozen=True, eq=False)
class FileTake:
    """Bytes written as they are at ``path`` (relative, inside the artifact: ``loops/001.wav``).

    ``media`` says what the bytes are: "audio" (a WAV or FLAC: the manifest records its audio
    facts and it can feed another generation), "text" or "file".
    """

    path: str
    data: bytes
    media: str = "file"
    prompt: str | None = None

    @property
    def duration_s(self) -> None:
        return None


Take = AudioTake | TextTake | FileTake


def check_output(settings: OutputSettings) -> OutputSettings:
    """The format and loudness target are ones Harmonia writes (RequestError otherwise)."""
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
    if isinstance(take, FileTake):
        return _write_file(folder, take)
    raise TypeError(f"no writer for a {type(take).__name__}")


def _write_file(folder: Path, take: FileTake) -> OutputRecord:
    relative = Path(take.path)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise ValueError(f"a file take's path must stay inside the artifact, got {take.path!r}")
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(take.data)
    extra = {}
    if take.media == "audio":
        import soundfile as sf

        samples, rate = sf.read(path, dtype="float32", always_2d=True)
        extra = facts(np.ascontiguousarray(samples.T), rate)
    elif take.media == "text":
        extra = {"characters": len(take.data.decode("utf-8"))}
    return OutputRecord(relative.as_posix(), sha256_file(path), take.media, take.prompt, **extra)


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
