"""Pictures of audio: waveform and spectrogram, for artifact previews, notebooks and widgets.

Figures are made with matplotlib's object API on the Agg canvas (no GUI, no global pyplot
state), so they can be drawn from worker threads and saved headless.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def audio_figure(samples: np.ndarray, sample_rate: int, title: str = "") -> Figure:
    """Waveform (top) and log-magnitude spectrogram (bottom) of ``[channels, samples]`` audio."""
    mono = samples.mean(axis=0) if samples.ndim == 2 else samples
    times = np.arange(len(mono)) / sample_rate
    fig = Figure(figsize=(8, 4), dpi=100, layout="constrained")
    wave_ax, spec_ax = fig.subplots(2, 1, sharex=True, height_ratios=[1, 2])
    wave_ax.plot(times, mono, linewidth=0.5, color="#1f4e79")
    wave_ax.set_ylim(-1, 1)
    wave_ax.set_ylabel("amplitude")
    if title:
        wave_ax.set_title(title, fontsize=9)
    nfft = 1024 if len(mono) >= 1024 else max(16, 2 ** int(np.log2(max(len(mono), 16))))
    spec_ax.specgram(mono + 1e-9, NFFT=nfft, Fs=sample_rate, noverlap=nfft * 3 // 4, cmap="magma")
    spec_ax.set_ylabel("Hz")
    spec_ax.set_xlabel("seconds")
    return fig


def save_audio_figure(path: str | Path, samples: np.ndarray, sample_rate: int, title: str = "") -> Path:
    """Write :func:`audio_figure` as a PNG (no timestamps in the file, so the bytes are stable)."""
    path = Path(path)
    audio_figure(samples, sample_rate, title).savefig(path, format="png", metadata={"Software": None})
    return path
