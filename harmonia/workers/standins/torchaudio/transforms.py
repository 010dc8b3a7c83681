"""``Spectrogram`` as torchaudio 2.1 computes it (Hann window, centred, reflect padding)."""

import torch
from torch import nn


class Spectrogram(nn.Module):
    def __init__(
        self,
        n_fft=400,
        win_length=None,
        hop_length=None,
        pad=0,
        window_fn=torch.hann_window,
        power=2.0,
        normalized=False,
        wkwargs=None,
        center=True,
        pad_mode="reflect",
        onesided=True,
    ):
        super().__init__()
        self.n_fft = n_fft
        self.win_length = win_length if win_length is not None else n_fft
        self.hop_length = hop_length if hop_length is not None else self.win_length // 2
        window = window_fn(self.win_length) if wkwargs is None else window_fn(self.win_length, **wkwargs)
        self.register_buffer("window", window)
        self.pad, self.power, self.normalized = pad, power, normalized
        self.center, self.pad_mode, self.onesided = center, pad_mode, onesided

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if self.pad > 0:
            waveform = nn.functional.pad(waveform, (self.pad, self.pad), "constant")
        shape = waveform.shape
        flat = waveform.reshape(-1, shape[-1])
        spec = torch.stft(
            flat,
            self.n_fft,
            self.hop_length,
            self.win_length,
            self.window,
            self.center,
            self.pad_mode,
            normalized=False,
            onesided=self.onesided,
            return_complex=True,
        )
        if self.normalized:  # "window": divide by the window's L2 norm, as torchaudio's normalized=True
            spec = spec / self.window.pow(2.0).sum().sqrt()
        spec = spec.reshape(shape[:-1] + spec.shape[-2:])
        if self.power is None:
            return spec
        return spec.abs().pow(self.power) if self.power != 1.0 else spec.abs()


class MelSpectrogram(nn.Module):
    """torchaudio's defaults: HTK mel scale, no filter normalisation (audiocraft imports it for its losses)."""

    def __init__(
        self,
        sample_rate=16000,
        n_fft=400,
        win_length=None,
        hop_length=None,
        f_min=0.0,
        f_max=None,
        pad=0,
        n_mels=128,
        window_fn=torch.hann_window,
        power=2.0,
        normalized=False,
        wkwargs=None,
        center=True,
        pad_mode="reflect",
        onesided=None,
        norm=None,
        mel_scale="htk",
    ):
        super().__init__()
        import librosa

        self.spectrogram = Spectrogram(
            n_fft, win_length, hop_length, pad, window_fn, power, normalized, wkwargs, center, pad_mode
        )
        fbanks = librosa.filters.mel(
            sr=sample_rate,
            n_fft=n_fft,
            n_mels=n_mels,
            fmin=f_min,
            fmax=f_max if f_max is not None else sample_rate / 2,
            htk=mel_scale == "htk",
            norm=norm,
        )
        self.register_buffer("fbanks", torch.from_numpy(fbanks).float())

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        spec = self.spectrogram(waveform)
        return torch.einsum("mf,...ft->...mt", self.fbanks.to(spec.dtype), spec)
