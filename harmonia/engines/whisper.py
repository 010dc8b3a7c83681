"""Whisper (transformers' automatic-speech-recognition pipeline): sung or spoken audio to text.

The engine loads a verified transformers snapshot of a Whisper checkpoint (safetensors,
``local_files_only=True``, no remote code) and runs the ASR pipeline on numpy arrays (no
ffmpeg): the source is resampled to 16 kHz mono and cut into 30-second windows that overlap
their neighbours by 5 s on each side (the pipeline's own chunking: ``chunk_length_s`` and
``stride_length_s``), one greedy decoding per window (the same audio gives the same text on
a machine and thread count), progress after each window and cancel between windows. The
pipeline then joins the windows' tokens where they overlap (the longest common token sequence
of neighbours), so a word sung across a window's edge lies whole inside the next window and
is written once; the manifest records the windows (start, end, own text) and the chunking. When the request
carries lyrics, the result records the word and character error rates of the transcript
against them on normalised text (harmonia.lyrics.intelligibility, jiwer) and the aligned
words, so a reader sees which words were not understood. ASR of a full mix is poor: give it
the vocal stem (``harmonia stems``), which ``harmonia transcribe`` picks by itself.

The engine knows nothing about artifacts, manifests or the UI.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from harmonia.audio import Audio, conform, is_silent, peak_dbfs, read_audio
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
    quiet_transformers,
)
from harmonia.errors import AudioError, RequestError
from harmonia.lyrics import Intelligibility, intelligibility
from harmonia.media import TextTake
from harmonia.requests import TranscribeRequest, check_limits
from harmonia.workbench import Workbench

RATE = 16_000  # Whisper's
WINDOW_S = 30  # Whisper's window
OVERLAP_S = 5  # how far a window reaches into each neighbour (transformers' default, WINDOW_S / 6)


@dataclass(frozen=True, eq=False)
class TranscriptResult:
    """The transcript as a text take, per window, and its scores against the lyrics."""

    text: str
    windows: tuple[dict, ...]  # {"start_s", "end_s", "text"} per window, overlapping by OVERLAP_S
    request: TranscribeRequest
    source: Audio
    scores: Intelligibility | None
    steps: int
    generate_s: float

    @property
    def takes(self) -> tuple[TextTake, ...]:
        return (TextTake(self.text, "transcript"),)

    @property
    def inputs(self) -> dict[str, Audio | None]:
        return {"source": self.source}

    def details(self) -> dict[str, Any]:
        return {
            "transcript": self.text,
            "chunking": CHUNKING,
            "windows": list(self.windows),
            "intelligibility": None if self.scores is None else self.scores.to_json(),
        }


CHUNKING = {
    "window_s": WINDOW_S,
    "overlap_s": OVERLAP_S,
    "join": "transformers' ASR pipeline: the longest common token sequence where neighbours overlap",
}


def window_spans(samples: int) -> tuple[tuple[int, int], ...]:
    """The windows ``[start, end)`` (in samples at 16 kHz) the pipeline's chunking cuts.

    Windows of ``WINDOW_S`` start every ``WINDOW_S - 2 * OVERLAP_S`` seconds, so neighbours
    share ``2 * OVERLAP_S``; the last one ends at the audio's end (transformers' ``chunk_iter``).

    Example:
        >>> [(a / RATE, b / RATE) for a, b in window_spans(65 * RATE)]
        [(0.0, 30.0), (20.0, 50.0), (40.0, 65.0)]
    """
    size, overlap = WINDOW_S * RATE, OVERLAP_S * RATE
    spans = []
    for start in range(0, samples, size - 2 * overlap):
        end = min(start + size, samples)
        if end - start > (overlap if start else 0):
            spans.append((start, end))
        if start + size >= samples:
            break
    return tuple(spans)


def _languages(snapshot: Path) -> tuple[str, ...]:
    try:
        config = json.loads((snapshot / "generation_config.json").read_text(encoding="utf-8"))
        return tuple(sorted(token.strip("<|>") for token in config.get("lang_to_id") or {}))
    except (OSError, ValueError) as exc:
        raise RequestError(
            f"{snapshot} is not a Whisper snapshot (generation_config.json unreadable: {exc}). Pick a whisper model."
        ) from None


class WhisperEngine:
    """A loaded Whisper ASR pipeline.

    Example:
        >>> engine = WhisperEngine.load(Workbench.open(), "tiny-whisper")  # doctest: +SKIP
        >>> engine.generate(TranscribeRequest(source="vocals.wav", lyrics="[verse]\\nhello")).scores.wer  # doctest: +SKIP
        1.0
    """

    name: ClassVar[str] = "whisper"
    kind: ClassVar[str] = "transcript"
    code_version: ClassVar[int] = 2  # bump when a change here changes output bytes (2: overlapping windows)
    packages: ClassVar[tuple[str, ...]] = ("torch", "transformers", "tokenizers", "numpy", "soxr", "jiwer")
    request_type: ClassVar[type] = TranscribeRequest
    precisions: ClassVar[tuple[str, ...]] = ("exact",)

    def __init__(self, asr, loaded: LoadedModel):
        self.asr = asr
        self.loaded = loaded

    @classmethod
    def load(cls, wb: Workbench, name: str, runtime: Runtime | None = None, **settings: Any) -> WhisperEngine:
        runtime = runtime or Runtime(**settings)
        cls.check_runtime(runtime)
        chosen = pick_device(runtime.device)
        from transformers import (
            AutoFeatureExtractor,
            AutoTokenizer,
            WhisperForConditionalGeneration,
            pipeline,
        )

        from harmonia.engines.base import DTYPES

        with TORCH_LOCK, Timer() as timer:
            spec, path, inventory = open_snapshot(wb, name, cls.name)
            dtype, threads = pick_dtype(runtime.dtype, chosen), pick_threads(runtime.threads)
            _languages(path)
            with pinned_threads(threads), quiet_transformers():
                model = WhisperForConditionalGeneration.from_pretrained(
                    path, local_files_only=True, use_safetensors=True, dtype=DTYPES[dtype]
                ).eval()
                asr = pipeline(
                    "automatic-speech-recognition",
                    model=model,
                    tokenizer=AutoTokenizer.from_pretrained(path, local_files_only=True),
                    feature_extractor=AutoFeatureExtractor.from_pretrained(path, local_files_only=True),
                    device=chosen,
                )
        loaded = LoadedModel(name, path, spec, inventory, str(chosen), dtype, threads, timer.seconds)
        return cls(asr, loaded)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "class": type(self.asr.model).__name__,
            "sample_rate": RATE,
            "window_s": WINDOW_S,
            "overlap_s": OVERLAP_S,
        }

    @classmethod
    def check_runtime(cls, runtime: Runtime) -> None:
        if runtime.precision != "exact":
            raise RequestError(f"precision must be exact for the whisper engine, got {runtime.precision!r}.")

    @classmethod
    def check_resources(cls, request: TranscribeRequest, snapshot: Path) -> None:
        """Nothing beyond check(): Whisper reads 30 s at a time."""

    @classmethod
    def fast_paths(cls, wb: Workbench, snapshot: Path, runtime: Runtime) -> tuple[tuple[str, str], ...]:
        return ()

    @classmethod
    def check(cls, request: TranscribeRequest, snapshot: Path) -> TranscribeRequest:
        """The language (one the model knows), the lyrics (text), the source (audible audio)."""
        known = _languages(snapshot)
        if request.language is not None and request.language not in known:
            raise RequestError(
                f"language {request.language!r} is not one model '{snapshot.name}' knows; known: "
                f"{', '.join(known)}. Leave it out to let the model detect it."
            )
        if request.lyrics is not None and not isinstance(request.lyrics, str):
            raise RequestError(f"lyrics must be text, got {type(request.lyrics).__name__}.")
        check_limits(request)
        if request.source is None:
            raise RequestError("source is missing: give the audio to transcribe (a file, or an artifact id).")
        source = read_audio(request.source, "source")
        if is_silent(source.samples):
            raise AudioError(
                f"source: {source.source or 'the audio'} is silent (peak {peak_dbfs(source.samples):.1f} dBFS, "
                "below -60 dBFS): there is nothing to transcribe. Give audio with a voice in it."
            )
        return replace(request, source=source)

    def generate(
        self, request: TranscribeRequest, progress: Progress | None = None, cancel: Cancel | None = None
    ) -> TranscriptResult:
        """Transcribe the source in overlapping 30 s windows; score it against the lyrics when given."""
        with TORCH_LOCK:
            return self._generate(request, progress, cancel)

    def _generate(
        self, request: TranscribeRequest, progress: Progress | None, cancel: Cancel | None
    ) -> TranscriptResult:
        # 1. Check inputs; the source at 16 kHz mono; its overlapping windows.
        request = type(self).check(request, self.loaded.path)
        wave = np.ascontiguousarray(conform(request.source, RATE, 1)[0])
        spans = window_spans(len(wave))
        step = Steps(len(spans), progress, cancel)
        options = {
            "task": "transcribe",
            "do_sample": False,
            "num_beams": 1,
            "max_new_tokens": request.max_new_tokens,
        }
        if request.language is not None:
            options["language"] = request.language
        chunking, forwarding, joining = self.asr._sanitize_parameters(
            chunk_length_s=WINDOW_S, stride_length_s=OVERLAP_S, ignore_warning=True, generate_kwargs=options
        )

        # 2. One greedy decoding per window (the pipeline's run_single, with a step between windows).
        outputs, windows = [], []
        with (
            torch.inference_mode(),
            pinned_threads(self.loaded.threads),
            quiet_transformers(),
            Timer() as timer,
        ):
            chunks = self.asr.preprocess({"raw": wave, "sampling_rate": RATE}, **chunking)
            for (start, end), chunk in zip(spans, chunks, strict=True):
                out = self.asr.forward(chunk, **forwarding)
                outputs.append(out)
                own = self.asr.tokenizer.decode(out["tokens"][0], skip_special_tokens=True).strip()
                windows.append(
                    {"start_s": round(start / RATE, 6), "end_s": round(end / RATE, 6), "text": own}
                )
                step()

            # 3. The windows joined where they overlap; its scores against the lyrics.
            text = self.asr.postprocess(outputs, **joining)["text"].strip()
        scores = None if request.lyrics is None else intelligibility(text, request.lyrics)
        return TranscriptResult(
            text, tuple(windows), request, request.source, scores, step.total, timer.seconds
        )
