"""A stand-in for torchaudio in Harmonia's audiocraft worker only: ``transforms.Spectrogram``.

audiocraft 1.3.0 imports torchaudio at module level in two places and uses only
``transforms.Spectrogram`` (the chroma of melody conditioning) on the generation path.
torchaudio has no wheel for Harmonia's torch; this is that one transform on ``torch.stft``.
"""

from . import transforms

__version__ = "0.0.0+harmonia.standin"
__all__ = ["transforms"]
