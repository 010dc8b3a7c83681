"""The slicer: any audio (an artifact's take, or a file) cut into a sample pack. No model, no randomness.

An engine without weights (``uses_model = False``) so that a pack takes the one generation
path (:func:`harmonia.generation.derive`): its id hashes the source's bytes and the request,
the source artifact becomes its parent, an identical request is a cache hit, and
``harmonia reproduce PACK`` regenerates it and compares the bytes. The cutting is
:func:`harmonia.samples.slice_pack` and the layout :func:`harmonia.samples.write_pack`
(``one-shots/NNN.wav``, ``loops/NNN.wav``, ``pack.json``, optionally ``pack.zip``); each file
becomes a :class:`~harmonia.media.FileTake` of the artifact.

The engine knows nothing about artifacts, manifests or the UI.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from harmonia.audio import Audio, is_silent, peak_dbfs, read_audio
from harmonia.engines.base import Cancel, LoadedModel, Progress, Runtime, Steps, Timer
from harmonia.errors import AudioError, RequestError
from harmonia.media import FilesResult, FileTake
from harmonia.requests import SLICE_TYPES, SliceRequest, check_limits
from harmonia.workbench import Workbench

PACK_FOLDER = "pack"  # the folder name inside pack.zip


PackResult = FilesResult  # a pack: its files as takes, and what the slicing found


class SlicerEngine:
    """Cuts audio into one-shots (at onsets) and loops (at bar boundaries, 4/4).

    Example:
        >>> derive(wb, "slicer", SliceRequest(source=From("5f0c8a4b"), bpm=120, zip=True))  # doctest: +SKIP
    """

    name: ClassVar[str] = "slicer"
    kind: ClassVar[str] = "pack"
    code_version: ClassVar[int] = 1  # bump when a change here changes output bytes
    packages: ClassVar[tuple[str, ...]] = ("librosa", "numpy", "scipy", "numba", "soundfile")
    request_type: ClassVar[type] = SliceRequest
    precisions: ClassVar[tuple[str, ...]] = ("exact",)
    uses_model: ClassVar[bool] = False

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded

    @classmethod
    def load(cls, wb: Workbench, name: str | None = None, runtime: Runtime | None = None) -> SlicerEngine:
        """Nothing to load: the slicer runs on the CPU with numpy and librosa."""
        runtime = (runtime or Runtime("cpu", threads=1)).resolved()
        return cls(LoadedModel(cls.name, None, None, None, "cpu", "float32", runtime.threads, 0.0))

    def describe(self) -> dict:
        return {"name": self.name, "uses_model": False}

    @classmethod
    def check_runtime(cls, runtime: Runtime) -> None:
        if runtime.precision != "exact":
            raise RequestError(f"precision must be exact for the slicer, got {runtime.precision!r}.")

    @classmethod
    def check_resources(cls, request: SliceRequest, snapshot: Path | None) -> None:
        """Nothing beyond check(): slicing holds one clip (at most 600 s) in memory."""

    @classmethod
    def fast_paths(cls, wb: Any, snapshot: Path | None, runtime: Runtime) -> tuple[tuple[str, str], ...]:
        """None: librosa's and numpy's own paths."""
        return ()

    @classmethod
    def check(cls, request: SliceRequest, snapshot: Path | None = None) -> SliceRequest:
        """The types, the ranges and the source: audio that is there and audible."""
        from harmonia.samples import check_type

        if not isinstance(request.types, tuple) or not request.types:
            raise RequestError(
                f"types must name at least one of {', '.join(SLICE_TYPES)}, got {request.types!r}."
            )
        for value in request.types:
            check_type(value, SLICE_TYPES, "types")
        check_limits(request)
        if not isinstance(request.zip, bool):
            raise RequestError(f"zip must be true or false, got {request.zip!r}.")
        if request.source is None:
            raise RequestError("source is missing: give the audio to slice (a file, or an artifact id).")
        source = read_audio(request.source, "source")
        if is_silent(source.samples):
            raise AudioError(
                f"source: {source.source or 'the audio'} is silent (peak {peak_dbfs(source.samples):.1f} dBFS, "
                "below -60 dBFS): there is nothing to cut. Slice audio with sound in it."
            )
        return replace(request, source=source)

    def generate(
        self, request: SliceRequest, progress: Progress | None = None, cancel: Cancel | None = None
    ) -> PackResult:
        """Slice the source and lay the pack out; one step (cancel is honoured after the cutting)."""
        from harmonia.samples import slice_pack, write_pack

        # 1. Check inputs.
        request = type(self).check(request)
        source: Audio = request.source
        step = Steps(1, progress, cancel)

        # 2. Cut.
        with Timer() as timer:
            try:
                pack = slice_pack(
                    source.samples, source.sample_rate, request.types, request.bpm, request.loop_bars
                )
            except AudioError as exc:
                where = source.source or "the audio"
                raise AudioError(str(exc).replace("audio: ", f"source: {where}: ", 1)) from None
        if not pack.slices:
            where = source.source or "the audio"
            raise AudioError(
                f"source: {where}: nothing to cut: {pack.onsets} onset(s) but no one-shot of at least 20 ms"
                f"{' and no steady beat for loops' if 'loop' in request.types else ''}. "
                "Slice audio with distinct hits or notes, or give --bpm."
            )
        step()

        # 3. Lay it out as the pack folder would be, and take its files' bytes.
        with tempfile.TemporaryDirectory(prefix="harmonia-pack-") as tmp:
            written = write_pack(pack, Path(tmp) / PACK_FOLDER, make_zip=request.zip)
            takes = [
                FileTake(
                    name, (written.folder / name).read_bytes(), "audio" if name.endswith(".wav") else "text"
                )
                for name in written.files
            ]
            if written.zip_path is not None:
                takes.append(FileTake(f"{PACK_FOLDER}.zip", written.zip_path.read_bytes(), "file"))
        facts = {
            "onsets": pack.onsets,
            "tempo_bpm": None if pack.tempo_bpm is None else round(pack.tempo_bpm, 6),
            "key": pack.key,
            "one_shots": len(pack.one_shots),
            "loops": len(pack.loops),
            "source_duration_s": round(pack.source_duration_s, 6),
        }
        return PackResult(tuple(takes), request, source, facts, step.total, timer.seconds)
