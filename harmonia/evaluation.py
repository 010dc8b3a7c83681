"""Evaluation: signal facts of generated audio and, with a CLAP model, text-audio alignment.

Signal facts need nothing but the samples: duration, integrated loudness (LUFS), true peak
(dBTP, from 4x oversampling), clipping ratio, silence ratio and spectral centroid. Alignment
is the cosine similarity of CLAP's text and audio embeddings (transformers ``ClapModel``),
loaded from a verified snapshot like every model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from harmonia.audio import loudness_lufs, resample, spectral_centroid_hz
from harmonia.engines.base import open_snapshot, pinned_threads, quiet_transformers
from harmonia.workbench import Workbench

CLIP_THRESHOLD = 0.999
SILENCE_DBFS = -60.0
SILENCE_FRAME_S = 0.05


def true_peak_dbtp(samples: np.ndarray, sample_rate: int) -> float | None:
    """The peak of the 4x oversampled signal in dB (ITU-R BS.1770 style); None for silence."""
    peak = float(np.max(np.abs(resample(samples, sample_rate, sample_rate * 4)))) if samples.size else 0.0
    return 20 * math.log10(peak) if peak > 0 else None


def clipping_ratio(samples: np.ndarray, threshold: float = CLIP_THRESHOLD) -> float:
    """Share of samples at or beyond ``threshold`` of full scale."""
    return float(np.mean(np.abs(samples) >= threshold)) if samples.size else 0.0


def silence_ratio(samples: np.ndarray, sample_rate: int, threshold_dbfs: float = SILENCE_DBFS) -> float:
    """Share of 50 ms frames whose RMS is below ``threshold_dbfs``."""
    mono = samples.mean(axis=0)
    frame = max(1, int(SILENCE_FRAME_S * sample_rate))
    count = len(mono) // frame
    if count == 0:
        return 1.0
    rms = np.sqrt(np.mean(mono[: count * frame].reshape(count, frame).astype(np.float64) ** 2, axis=1))
    with np.errstate(divide="ignore"):
        level = 20 * np.log10(rms)
    return float(np.mean(level < threshold_dbfs))


def signal_facts(samples: np.ndarray, sample_rate: int, silence_dbfs: float = SILENCE_DBFS) -> dict:
    """Every signal fact of ``[channels, samples]`` audio, rounded for reports."""

    def r(x, digits):
        return None if x is None else round(x, digits)

    return {
        "duration_s": round(samples.shape[1] / sample_rate, 4),
        "loudness_lufs": r(loudness_lufs(samples, sample_rate), 2),
        "true_peak_dbtp": r(true_peak_dbtp(samples, sample_rate), 2),
        "clipping_ratio": round(clipping_ratio(samples), 6),
        "silence_ratio": round(silence_ratio(samples, sample_rate, silence_dbfs), 4),
        "spectral_centroid_hz": r(spectral_centroid_hz(samples, sample_rate), 1),
    }


class ClapScorer:
    """Text-audio alignment with a CLAP snapshot: cosine similarity of the two embeddings.

    Example:
        >>> scorer = ClapScorer.load(Workbench.open(), "clap")  # doctest: +SKIP
        >>> scorer.score(["calm piano"], [(samples, 32000)])  # doctest: +SKIP
        [0.31]
    """

    def __init__(self, model, processor, name: str, threads: int):
        self.model, self.processor, self.name, self.threads = model, processor, name, threads
        features = processor.feature_extractor
        self.sample_rate: int = features.sampling_rate
        self.clip_samples: int = int(features.nb_max_samples)

    @classmethod
    def load(cls, wb: Workbench, name: str, threads: int | None = None) -> ClapScorer:
        from transformers import ClapModel, ClapProcessor

        _, path, _ = open_snapshot(wb, name, "clap")
        with quiet_transformers():
            model = ClapModel.from_pretrained(path, local_files_only=True, use_safetensors=True).eval()
            processor = ClapProcessor.from_pretrained(path, local_files_only=True)
        return cls(model, processor, name, threads or torch.get_num_threads())

    def _fit(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """Mono at CLAP's rate, trimmed or zero-padded to exactly its clip length.

        (CLAP's feature extractor crops longer clips at a random place, which would make the
        score change from run to run.)
        """
        mono = resample(samples.mean(axis=0, keepdims=True), sample_rate, self.sample_rate)[0]
        out = np.zeros(self.clip_samples, np.float32)
        out[: min(len(mono), self.clip_samples)] = mono[: self.clip_samples]
        return out

    def score(self, texts: list[str], clips: list[tuple[np.ndarray, int]]) -> list[float]:
        """Cosine similarity of each text with its clip (``[channels, samples]``, rate)."""
        audio = [self._fit(samples, rate) for samples, rate in clips]
        inputs = self.processor(
            text=texts, audio=audio, sampling_rate=self.sample_rate, return_tensors="pt", padding=True
        )
        with torch.inference_mode(), pinned_threads(self.threads):
            text = self.model.get_text_features(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
            )
            sound = self.model.get_audio_features(input_features=inputs["input_features"])
        text = torch.nn.functional.normalize(_embedding(text), dim=-1)
        sound = torch.nn.functional.normalize(_embedding(sound), dim=-1)
        return [round(float(x), 6) for x in (text * sound).sum(dim=-1)]


def _embedding(output) -> torch.Tensor:
    """transformers 5 returns a model output from get_*_features; older versions a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
