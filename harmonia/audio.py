"""Audio in and out: read any common format, resample, write WAV/FLAC, measure, normalise.

Arrays are float32 shaped ``[channels, samples]`` (one clip) or ``[batch, channels, samples]``
(a result). soundfile (libsndfile) reads and writes; soxr resamples, deterministically;
pyloudnorm measures integrated loudness (ITU-R BS.1770). This module knows samples and
files, nothing about models.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from harmonia.errors import AudioError

FORMATS = {"wav": ("WAV", "FLOAT"), "flac": ("FLAC", "PCM_24")}
SFC_SET_ADD_PEAK_CHUNK = 0x1050  # from sndfile.h
SILENCE_DBFS = -60.0
PEAK_GUARD_DBFS = -1.0
MAX_INPUT_S = 600.0  # an input longer than ten minutes is refused before it is read


@dataclass(frozen=True, eq=False)
class Audio:
    """A clip: float32 samples ``[channels, samples]`` at ``sample_rate``, and where it came from."""

    samples: np.ndarray
    sample_rate: int
    sha256: str  # of the source file's bytes, or of the array's float32 bytes and rate
    source: str | None = None  # the file it was read from
    raw: bytes | None = field(
        default=None, repr=False
    )  # those bytes, read once (what was decoded is what is kept)

    @property
    def channels(self) -> int:
        return int(self.samples.shape[0])

    @property
    def duration_s(self) -> float:
        return self.samples.shape[1] / self.sample_rate

    def describe(self) -> dict:
        """What a manifest records of an input: its digest, rate, channels and length."""
        return {
            "sha256": self.sha256,
            "source": self.source,
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "duration_s": round(self.duration_s, 6),
        }


def read_audio(source: str | os.PathLike[str] | Audio, what: str = "audio") -> Audio:
    """Read a file (WAV, FLAC, OGG, MP3, AIFF, ...) as float32 ``[channels, samples]``.

    Args:
        source: a path, or an :class:`Audio` (returned as is).
        what: the parameter's name, for error messages ("melody", "continuation").

    Example:
        >>> clip = read_audio("take-0.wav")  # doctest: +SKIP
        >>> clip.samples.shape, clip.sample_rate  # doctest: +SKIP
        ((1, 320000), 32000)
    """
    if isinstance(source, Audio):
        return source
    path = Path(source)
    try:
        info = sf.info(str(path))
        if info.samplerate > 0 and info.frames / info.samplerate > MAX_INPUT_S:
            raise AudioError(
                f"{what}: {path} is {info.frames / info.samplerate:.1f} s long; audio inputs are limited to "
                f"{MAX_INPUT_S:g} s. Trim it to the part you want used."
            )
        data = path.read_bytes()
        with sf.SoundFile(io.BytesIO(data)) as f:  # decode the bytes that were hashed, not the file again
            samples = f.read(dtype="float32", always_2d=True).T
            rate = f.samplerate
    except (OSError, RuntimeError, sf.LibsndfileError) as exc:
        raise AudioError(
            f"{what}: cannot read {path} as audio ({exc}). Give a WAV, FLAC, OGG or MP3 file."
        ) from None
    if samples.shape[1] == 0:
        raise AudioError(f"{what}: {path} holds no samples. Give a file with audio in it.")
    bad = int(np.count_nonzero(~np.isfinite(samples)))
    if bad:
        raise AudioError(
            f"{what}: {path} holds {bad} NaN or infinite samples; give a file of finite samples (re-export it)."
        )
    return Audio(np.ascontiguousarray(samples), int(rate), hashlib.sha256(data).hexdigest(), str(path), data)


def from_array(samples: np.ndarray, sample_rate: int, what: str = "audio") -> Audio:
    """Wrap an array (``[samples]`` or ``[channels, samples]``) as :class:`Audio`."""
    array = np.asarray(samples, dtype=np.float32)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] == 0 or array.shape[0] > 8:
        raise AudioError(
            f"{what}: expected an array [samples] or [channels, samples], got shape {array.shape}."
        )
    if not np.isfinite(array).all():
        raise AudioError(f"{what}: the array holds NaN or infinite samples.")
    if not isinstance(sample_rate, int) or not 1000 <= sample_rate <= 384_000:
        raise AudioError(f"{what}: sample_rate must be an integer in [1000, 384000], got {sample_rate!r}.")
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(array.tobytes() + str(sample_rate).encode()).hexdigest()
    return Audio(array, sample_rate, digest)


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample ``[channels, samples]`` with soxr (high quality, deterministic)."""
    if from_rate == to_rate:
        return samples
    out = soxr.resample(np.ascontiguousarray(samples.T), from_rate, to_rate, quality="HQ")
    return np.ascontiguousarray(out.T.astype(np.float32))


def conform(clip: Audio, sample_rate: int, channels: int) -> np.ndarray:
    """The clip at ``sample_rate`` with ``channels`` channels (mixed down or duplicated)."""
    samples = resample(clip.samples, clip.sample_rate, sample_rate)
    if samples.shape[0] == channels:
        return samples
    if channels == 1:
        return samples.mean(axis=0, keepdims=True)
    return np.repeat(samples.mean(axis=0, keepdims=True), channels, axis=0)


def peak_dbfs(samples: np.ndarray) -> float:
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    return 20 * math.log10(peak) if peak > 0 else -math.inf


def is_silent(samples: np.ndarray) -> bool:
    return peak_dbfs(samples) < SILENCE_DBFS


def loudness_lufs(samples: np.ndarray, sample_rate: int) -> float | None:
    """Integrated loudness (LUFS) of ``[channels, samples]``; None for clips under 0.4 s or silence."""
    import pyloudnorm

    if samples.shape[1] < int(0.4 * sample_rate) or is_silent(samples):
        return None
    value = pyloudnorm.Meter(sample_rate).integrated_loudness(samples.T.astype(np.float64))
    return float(value) if math.isfinite(value) else None


def normalize_loudness(
    samples: np.ndarray, sample_rate: int, target_lufs: float, peak_guard_dbfs: float = PEAK_GUARD_DBFS
) -> np.ndarray:
    """Scale to ``target_lufs``, then down if needed so the peak stays under ``peak_guard_dbfs``.

    Silent or too-short clips are returned unchanged.
    """
    current = loudness_lufs(samples, sample_rate)
    if current is None:
        return samples
    gain = 10 ** ((target_lufs - current) / 20)
    peak = float(np.max(np.abs(samples))) * gain
    limit = 10 ** (peak_guard_dbfs / 20)
    if peak > limit:
        gain *= limit / peak
    return (samples * np.float32(gain)).astype(np.float32)


def write_audio(
    path: str | os.PathLike[str], samples: np.ndarray, sample_rate: int, fmt: str = "wav"
) -> Path:
    """Write ``[channels, samples]`` as WAV (32-bit float, exact) or FLAC (24-bit PCM)."""
    if fmt not in FORMATS:
        raise AudioError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}.")
    container, subtype = FORMATS[fmt]
    path = Path(path)
    with sf.SoundFile(path, "w", sample_rate, samples.shape[0], subtype, format=container) as f:
        # libsndfile adds a PEAK chunk with the write time to float WAVs; the same samples
        # must give the same bytes, so turn it off (libsndfile's SFC_SET_ADD_PEAK_CHUNK).
        if subtype == "FLOAT":
            sf._snd.sf_command(f._file, SFC_SET_ADD_PEAK_CHUNK, sf._ffi.NULL, 0)
        f.write(np.ascontiguousarray(samples.T))
    return path


def facts(samples: np.ndarray, sample_rate: int) -> dict:
    """Duration, peak and loudness of ``[channels, samples]``, as a manifest records them."""
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    loud = loudness_lufs(samples, sample_rate)
    return {
        "sample_rate": sample_rate,
        "channels": int(samples.shape[0]),
        "frames": int(samples.shape[1]),
        "duration_s": round(samples.shape[1] / sample_rate, 6),
        "peak": round(peak, 6),
        "peak_dbfs": round(peak_dbfs(samples), 2) if peak > 0 else None,
        "loudness_lufs": round(loud, 2) if loud is not None else None,
    }


def spectral_centroid_hz(samples: np.ndarray, sample_rate: int) -> float | None:
    """Mean frequency weighted by magnitude over the whole clip (a brightness measure); None for silence."""
    mono = samples.mean(axis=0) if samples.ndim == 2 else samples
    spectrum = np.abs(np.fft.rfft(mono.astype(np.float64)))
    total = float(spectrum.sum())
    if total == 0 or is_silent(samples):
        return None
    freqs = np.fft.rfftfreq(len(mono), 1 / sample_rate)
    return float((freqs * spectrum).sum() / total)


def mp3_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """An MP3 rendering of ``[channels, samples]`` for players: small enough to send to a browser.

    About 160 kbit/s: five minutes of stereo stay under 7 MB, inside JupyterLab's message limit.
    The artifact's own files stay lossless; this is only what a player streams.
    """
    buffer = io.BytesIO()
    clipped = np.clip(samples, -1.0, 1.0).T
    sf.write(
        buffer,
        clipped,
        sample_rate,
        format="MP3",
        subtype="MPEG_LAYER_III",
        bitrate_mode="CONSTANT",
        compression_level=0.5,
    )
    return buffer.getvalue()
