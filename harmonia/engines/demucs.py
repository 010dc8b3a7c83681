"""Demucs (the ``demucs`` package, Hybrid Transformer Demucs): any audio into vocals, drums, bass, other.

The engine loads a verified snapshot in the layout the demucs hub repos use
(``adefossez/HTDemucs``: ``NAME.yaml`` naming the bag's models, one ``SIG.safetensors`` per
model with the model class and its arguments in the safetensors metadata). demucs would
import whatever class the metadata names; Harmonia first checks it is one of demucs' own
separation models and refuses quantized (structured) states, then loads with
``demucs.hf.load_safetensors_model``. Separation runs ``demucs.apply.apply_model`` without
random shifts (``shifts=0``: the same source gives the same stems) in overlapping segments;
progress is reported after every segment and cancelling raises between segments.

Each stem is a WAV take (``vocals.wav``, ``drums.wav``, ``bass.wav``, ``other.wav``) at the
model's rate; the manifest records how far the sum of the stems is from the source as the
model heard it (resampled to its rate): the largest sample difference and the SNR in dB.

The engine knows nothing about artifacts, manifests or the UI.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from harmonia.audio import conform, is_silent, peak_dbfs, read_audio, write_audio
from harmonia.engines.base import (
    TORCH_LOCK,
    Cancel,
    LoadedModel,
    Progress,
    Runtime,
    Steps,
    Timer,
    open_snapshot,
    pick_device,
    pick_dtype,
    pick_threads,
    pinned_threads,
)
from harmonia.errors import AudioError, RequestError
from harmonia.media import FilesResult, FileTake
from harmonia.requests import StemsRequest, check_limits
from harmonia.workbench import Workbench

MODEL_CLASSES = ("demucs.htdemucs.HTDemucs", "demucs.hdemucs.HDemucs", "demucs.demucs.Demucs")
STEM_ORDER = ("vocals", "drums", "bass", "other")


StemsResult = FilesResult  # the stems as WAV takes, and how well they add up to the source


def _bag_files(snapshot: Path, name: str) -> tuple[Path, list[Path], dict]:
    """The bag's yaml, its model files, and the yaml's content; RequestError for another layout."""
    import yaml

    yamls = sorted(snapshot.glob("*.yaml"))
    if len(yamls) != 1:
        raise RequestError(
            f"Model '{name}' is not a demucs snapshot: it needs exactly one NAME.yaml naming its models "
            f"(found {len(yamls)}). Fetch a demucs hub repo such as adefossez/HTDemucs."
        )
    bag = yaml.safe_load(yamls[0].read_text(encoding="utf-8")) or {}
    sigs = bag.get("models") if isinstance(bag, dict) else None
    if not isinstance(sigs, list) or not sigs:
        raise RequestError(f"Model '{name}': {yamls[0].name} names no models; it is not a demucs bag.")
    files = [snapshot / f"{sig}.safetensors" for sig in sigs]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise RequestError(f"Model '{name}' lacks {', '.join(missing)}, which {yamls[0].name} names.")
    return yamls[0], files, bag


def _check_model_file(path: Path, name: str) -> dict:
    """The model file names one of demucs' separation classes and a plain state (no code to import)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata() or {}
    klass = metadata.get("klass")
    if klass not in MODEL_CLASSES:
        raise RequestError(
            f"Model '{name}': {path.name} asks to build {klass!r}; Harmonia builds demucs' own separation "
            f"models only ({', '.join(MODEL_CLASSES)})."
        )
    if "structure" in metadata:
        raise RequestError(
            f"Model '{name}': {path.name} holds a quantized state (it would import classes named in the file); "
            "use an unquantized demucs model such as htdemucs."
        )
    return json.loads(metadata.get("kwargs") or "{}")


class DemucsEngine:
    """A loaded demucs bag of models.

    Example:
        >>> engine = DemucsEngine.load(Workbench.open(), "tiny-demucs")  # doctest: +SKIP
        >>> [t.path for t in engine.generate(StemsRequest(source="song.wav")).takes]  # doctest: +SKIP
        ['vocals.wav', 'drums.wav', 'bass.wav', 'other.wav']
    """

    name: ClassVar[str] = "demucs"
    kind: ClassVar[str] = "stems"
    code_version: ClassVar[int] = 1  # bump when a change here changes output bytes
    packages: ClassVar[tuple[str, ...]] = ("torch", "demucs", "numpy", "soxr", "soundfile")
    request_type: ClassVar[type] = StemsRequest
    precisions: ClassVar[tuple[str, ...]] = ("exact",)

    def __init__(self, bag, loaded: LoadedModel):
        self.bag = bag
        self.loaded = loaded
        self.device = torch.device(loaded.device)
        self.sample_rate = int(bag.samplerate)
        self.channels = int(bag.audio_channels)

    @classmethod
    def load(cls, wb: Workbench, name: str, runtime: Runtime | None = None, **settings: Any) -> DemucsEngine:
        """Load a declared, present and verified demucs snapshot (float32; device and threads recorded)."""
        runtime = runtime or Runtime(**settings)
        cls.check_runtime(runtime)
        chosen = pick_device(runtime.device)
        from demucs.apply import BagOfModels
        from demucs.hf import load_safetensors_model

        with TORCH_LOCK, Timer() as timer:
            spec, path, inventory = open_snapshot(wb, name, cls.name)
            dtype, threads = pick_dtype(runtime.dtype, chosen), pick_threads(runtime.threads)
            _, files, bag = _bag_files(path, name)
            for file in files:
                _check_model_file(file, name)
            with pinned_threads(threads):
                models = [load_safetensors_model(f).eval().to(chosen) for f in files]
            bag = BagOfModels(models, bag.get("weights"), bag.get("segment"))
        loaded = LoadedModel(name, path, spec, inventory, str(chosen), dtype, threads, timer.seconds)
        return cls(bag, loaded)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "class": type(self.bag.models[0]).__name__,
            "models": len(self.bag.models),
            "sources": list(self.bag.sources),
            "sample_rate": self.sample_rate,
            "segment_s": float(self.bag.models[0].segment),
        }

    @classmethod
    def check_runtime(cls, runtime: Runtime) -> None:
        if runtime.precision != "exact":
            raise RequestError(f"precision must be exact for the demucs engine, got {runtime.precision!r}.")
        if runtime.dtype not in (None, "float32"):
            raise RequestError(f"dtype must be float32 for the demucs engine, got {runtime.dtype!r}.")

    @classmethod
    def check_resources(cls, request: StemsRequest, snapshot: Path) -> None:
        """Nothing beyond check(): a clip of at most ten minutes and four stems of it fit in memory."""

    @classmethod
    def fast_paths(cls, wb: Workbench, snapshot: Path, runtime: Runtime) -> tuple[tuple[str, str], ...]:
        return ()

    @classmethod
    def check(cls, request: StemsRequest, snapshot: Path) -> StemsRequest:
        """The overlap's range and the source: audio that is there and audible."""
        _, files, _ = _bag_files(snapshot, snapshot.name)
        kwargs = _check_model_file(files[0], snapshot.name)
        sources = kwargs.get("sources") or []
        if sorted(sources) != sorted(STEM_ORDER):
            raise RequestError(
                f"Model '{snapshot.name}' separates {', '.join(sources)}; Harmonia's stems are "
                f"{', '.join(STEM_ORDER)}. Pick a four-stem model such as htdemucs."
            )
        check_limits(request)
        if request.source is None:
            raise RequestError("source is missing: give the audio to split (a file, or an artifact id).")
        source = read_audio(request.source, "source")
        if is_silent(source.samples):
            raise AudioError(
                f"source: {source.source or 'the audio'} is silent (peak {peak_dbfs(source.samples):.1f} dBFS, "
                "below -60 dBFS): there is nothing to separate. Give audio with sound in it."
            )
        return replace(request, source=source)

    def generate(
        self, request: StemsRequest, progress: Progress | None = None, cancel: Cancel | None = None
    ) -> StemsResult:
        """Split the source into vocals, drums, bass and other; one step per model segment."""
        with TORCH_LOCK:
            return self._generate(request, progress, cancel)

    def _generate(
        self, request: StemsRequest, progress: Progress | None, cancel: Cancel | None
    ) -> StemsResult:
        from demucs.apply import apply_model

        # 1. Check inputs; the source at the model's rate and channels.
        request = type(self).check(request, self.loaded.path)
        mix = conform(request.source, self.sample_rate, self.channels)  # [channels, samples]
        segment = float(self.bag.models[0].segment)  # apply_model's default: each model's own
        stride = int((1 - request.overlap) * int(self.sample_rate * segment))
        chunks = len(range(0, mix.shape[1], max(stride, 1)))
        step = Steps(chunks * len(self.bag.models), progress, cancel)

        def on_chunk(info: dict) -> None:
            if info.get("state") == "end":
                step()  # raises Cancelled between segments

        # 2. Separate: no random shifts, overlapping segments, the bag's weights.
        with torch.inference_mode(), pinned_threads(self.loaded.threads), Timer() as timer:
            wav = torch.from_numpy(mix)[None].to(self.device)
            out = apply_model(
                self.bag, wav, shifts=0, split=True, overlap=request.overlap, device=self.device,
                callback=on_chunk,
            )[0]  # fmt: skip
        stems = {name: out[i].cpu().numpy().astype(np.float32) for i, name in enumerate(self.bag.sources)}

        # 3. Takes in a fixed order, and how well they add up to the source.
        total = sum(stems[n].astype(np.float64) for n in STEM_ORDER)
        diff = total - mix.astype(np.float64)
        noise, signal = float(np.sum(diff**2)), float(np.sum(mix.astype(np.float64) ** 2))
        snr = math.inf if noise == 0 else 10 * math.log10(signal / noise)
        takes = []
        with tempfile.TemporaryDirectory(prefix="harmonia-stems-") as tmp:
            for name in STEM_ORDER:
                path = write_audio(Path(tmp) / f"{name}.wav", stems[name], self.sample_rate, "wav")
                takes.append(FileTake(f"{name}.wav", path.read_bytes(), "audio", name))
        facts = {
            "stems": list(STEM_ORDER),
            "sample_rate": self.sample_rate,
            "segments": step.total,
            "sum_max_abs_diff": round(float(np.max(np.abs(diff))), 6),
            "sum_snr_db": round(snr, 3) if math.isfinite(snr) else None,
            "stem_peak_dbfs": {n: _finite(peak_dbfs(stems[n])) for n in STEM_ORDER},
        }
        return StemsResult(tuple(takes), request, request.source, facts, step.total, timer.seconds)


def _finite(value: float) -> float | None:
    return round(value, 3) if math.isfinite(value) else None
