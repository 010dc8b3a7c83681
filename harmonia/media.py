"""Takes of media and the one writer per media type.

An engine's result is a tuple of takes: :class:`AudioTake` (float32 ``[channels, samples]``
and a rate), :class:`VideoTake` (uint8 frames ``[frames, height, width, 3]``, a frame rate
and an optional audio track), :class:`TextTake`, or :class:`FileTake` (bytes written as
they are under a relative path: a sample pack's WAVs, its pack.json and zip).
``write_take`` writes a take into an artifact folder the one way its media type is written
(audio: WAV or FLAC, optional loudness target, a waveform/spectrogram picture; video: an
H.264 yuv420p MP4 through PyAV with the encoder's threads pinned and x264's AVX-512 code
out, so the same frames give the same bytes, the track as AAC, a poster frame and a contact sheet; text: UTF-8) and
returns its :class:`OutputRecord`. The generation path never branches on a kind, only on the media type of a take.

This module knows samples, text and files; it knows nothing about engines or manifests'
other fields.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from harmonia.audio import FORMATS, Audio, facts, normalize_loudness, write_audio
from harmonia.errors import RequestError
from harmonia.hashing import sha256_file
from harmonia.manifest import OutputRecord, OutputSettings

LUFS_RANGE = (-70.0, 0.0)
WRITER_VERSION = 1  # bump when a change here changes written bytes (it is part of every artifact id)
# A change that alters the bytes of one media type only bumps the code_version of the engines
# that write it instead, so the other kinds keep their ids: the MP4 writer's x264 without its
# AVX-512 code (2026-12-06) is wan's code_version 2.


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
class VideoTake:
    """One video take: uint8 RGB frames ``[frames, height, width, 3]`` at ``fps``, and its soundtrack."""

    frames: np.ndarray
    fps: float
    audio: AudioTake | None = None
    prompt: str | None = None

    @property
    def duration_s(self) -> float:
        return self.frames.shape[0] / self.fps


@dataclass(frozen=True)
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


@dataclass(frozen=True, eq=False)
class FilesResult:
    """What an engine made from one source audio as files (a sample pack, stems), and what it found.

    ``request`` is the engine's request, ``facts`` go in the manifest's engine details.
    """

    takes: tuple[FileTake, ...]
    request: Any
    source: Audio
    facts: dict[str, Any]
    steps: int
    generate_s: float

    @property
    def inputs(self) -> dict[str, Audio | None]:
        return {"source": self.source}

    def details(self) -> dict[str, Any]:
        return dict(self.facts)


Take = AudioTake | VideoTake | TextTake | FileTake
VIDEO_CRF = 18  # libx264's constant quality (visually near-lossless)
X264_CPU_AVX512 = 1 << 16  # x264.h's flag for its AVX-512 code paths
CONTACT_SHEET_FRAMES = 8


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
    if isinstance(take, VideoTake):
        return _write_video(folder, f"take-{index}", take, settings, previews)
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


def _write_video(
    folder: Path, stem: str, take: VideoTake, settings: OutputSettings, previews: bool
) -> OutputRecord:
    """An MP4 (H.264 yuv420p, one encoder thread, no AVX-512, no clock) and its pictures."""
    import av

    frames = np.ascontiguousarray(take.frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise TypeError(
            f"video frames must be uint8 [frames, height, width, 3], got {frames.dtype} {frames.shape}"
        )
    count, height, width, _ = frames.shape
    path = folder / f"{stem}.mp4"
    rate = Fraction(take.fps).limit_denominator(1001)
    with av.open(str(path), "w", options={"fflags": "+bitexact"}) as container:
        video = container.add_stream("libx264", rate=rate)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.thread_count = 1  # the encoder's threads change its bytes: pinned
        video.options = {
            "crf": str(VIDEO_CRF),
            "preset": "medium",
            "threads": "1",
            "x264-params": x264_params(),
        }
        video.codec_context.flags |= av.codec.context.Flags.bitexact
        audio_stream, track = None, take.audio
        if track is not None:
            samples = track.samples
            if settings.normalize_lufs is not None:
                samples = normalize_loudness(samples, track.sample_rate, settings.normalize_lufs)
            audio_stream = container.add_stream("aac", rate=track.sample_rate)
            audio_stream.layout = "stereo" if samples.shape[0] == 2 else "mono"
            audio_stream.codec_context.flags |= av.codec.context.Flags.bitexact
        for i in range(count):
            frame = av.VideoFrame.from_ndarray(frames[i], format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if audio_stream is not None:
            layout = audio_stream.layout.name
            pcm = np.ascontiguousarray(np.clip(samples, -1, 1).astype(np.float32))
            block = 1024
            for start in range(0, pcm.shape[1], block):
                chunk = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(pcm[:, start : start + block]), format="fltp", layout=layout
                )
                chunk.sample_rate, chunk.pts = track.sample_rate, start
                for packet in audio_stream.encode(chunk):
                    container.mux(packet)
            for packet in audio_stream.encode():
                container.mux(packet)
    preview = None
    if previews:
        preview = _video_pictures(folder, stem, frames)
    facts_ = {}
    if take.audio is not None:
        facts_ = {"sample_rate": take.audio.sample_rate, "channels": int(take.audio.samples.shape[0])}
    return OutputRecord(
        path.name, sha256_file(path), "video", take.prompt, preview, duration_s=round(count / take.fps, 6),
        width=width, height=height, fps=float(take.fps), frame_count=count, **facts_,
    )  # fmt: skip


@functools.cache
@functools.cache
def x264_params() -> str:
    """x264's options that keep its AVX-512 code out: the CPU's own flags less AVX-512.

    x264 (core 165) propagates its macroblock-tree costs 8 macroblocks at a time with AVX-512
    (``mbtree_propagate_list_internal_avx512``) and masks the targets, not the row's end: on a
    frame whose width is not a multiple of 128 pixels the last group reads mvs, costs and
    amounts past the row, from memory x264 never wrote, and adds them to its lookahead costs.
    The same frames gave other MP4 bytes from call to call in one process (and under
    ``MALLOC_PERTURB_``); the README's "Video bytes" has the evidence. Its SSE/AVX2 version
    stops at the row's end. Where the loaded libx264 cannot be asked for its flags, the
    macroblock tree is turned off instead (the same bytes from call to call, larger files).
    The options change the bytes, so the wan engine names them among its paths (in the id).
    """
    import ctypes

    import av  # noqa: F401  (loads libavcodec and the libx264 it links)

    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {line.split()[-1] for line in maps if "libx264" in line.rsplit("/", 1)[-1]}
        (path,) = paths
        detect = ctypes.CDLL(path).x264_cpu_detect
    except (OSError, ValueError, AttributeError):
        return "mbtree=0"
    detect.restype = ctypes.c_uint32
    return f"asm={detect() & ~X264_CPU_AVX512}"


def _video_pictures(folder: Path, stem: str, frames: np.ndarray) -> str:
    """``STEM.png`` (the poster: the middle frame) and ``STEM-sheet.png`` (frames spread over the clip)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    poster = folder / f"{stem}.png"
    plt.imsave(poster, frames[len(frames) // 2], metadata={"Software": None})
    picks = np.linspace(0, len(frames) - 1, min(CONTACT_SHEET_FRAMES, len(frames))).round().astype(int)
    columns = min(4, len(picks))
    rows = -(-len(picks) // columns)
    height, width = frames.shape[1:3]
    sheet = np.full((rows * height, columns * width, 3), 255, dtype=np.uint8)
    for n, i in enumerate(picks):
        r, c = divmod(n, columns)
        sheet[r * height : (r + 1) * height, c * width : (c + 1) * width] = frames[i]
    plt.imsave(folder / f"{stem}-sheet.png", sheet, metadata={"Software": None})
    return poster.name
