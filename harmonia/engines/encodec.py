"""EnCodec's decoder in channels-last layout and in chunks: the ``encodec_layout`` path "channels-last".

A MusicGen take ends by decoding its tokens to audio with EnCodec (transformers'
``EncodecDecoder``): a convolution, an LSTM over the frames, then four upsampling stages of
transposed and residual convolutions up to the sample rate. After the LSTM every layer is
local in time, and on a long take its tensors are large (64 channels by 320,000 samples for
10 s at 32 kHz): oneDNN reorders each [batch, channels, samples] tensor into its blocked layout
and back at every convolution, and the tensors stream through memory layer after layer. The
layers before the LSTM and the LSTM run as transformers runs them; this path runs the layers
after it on [batch, channels, 1, samples] tensors in channels-last layout, oneDNN's own, in
chunks of :data:`CHUNK_FRAMES` frames with at least :data:`HALO_FRAMES` frames of context on
each side (more where a config's layers see further: :func:`context_frames`; musicgen-small's
see under one frame), so that the samples a chunk keeps see what the whole would, and a
chunk's tensors (16 MiB each on musicgen-small) stay in the CPU's last-level cache.

Measured on an Intel Xeon of the Ice Lake class (2 threads, musicgen-small's EnCodec, the whole
decoder, alternated in one process, best and median of 5): 0.97 and 1.04 s against
transformers' 1.55 and 1.78 s for 500 frames (10 s of audio), 3.11 and 3.42 against 6.05 and
6.31 for 1500. The audio differs from transformers' decoder by rounding (oneDNN picks its
algorithm and its order of sums by layout and shape; up to 1.4e-7 measured on musicgen-small's
architecture with random weights, whose samples reach about 0.07), so it is a path of its own:
chosen by measurement, recorded in the manifest, part of the artifact id and replayed by
``reproduce``. ``exact`` never takes it (it promises transformers' bytes).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from transformers.models.encodec.modeling_encodec import (
    EncodecConv1d,
    EncodecConvTranspose1d,
    EncodecLSTM,
    EncodecResnetBlock,
)

ENCODEC_LAYOUTS = ("torch", "channels-last")
# The bytes of a channels-last take depend on these two (oneDNN's sums follow the shapes): changing
# either changes every such artifact's audio, so it needs a new path name, not an edit.
CHUNK_FRAMES = 100  # frames a chunk keeps (64 channels x 64,000 samples of float32 at 32 kHz: 16 MiB)
HALO_FRAMES = 3  # frames of context on each side of a chunk at least, dropped after the last layer
CHANNELS_LAST = torch.channels_last


def unsupported(decoder: torch.nn.Module) -> str | None:
    """None when :class:`ChannelsLastDecoder` can run ``decoder``; else why not (one line)."""
    layers = list(getattr(decoder, "layers", ()))
    if not any(isinstance(layer, EncodecLSTM) for layer in layers):
        return "the decoder has no LSTM to split at"
    for layer in layers[_after_lstm(layers) :]:
        for part in _parts(layer):
            if isinstance(part, EncodecConv1d | EncodecConvTranspose1d) and part.norm_type != "weight_norm":
                return f"its convolutions are normalised by {part.norm_type!r}, not weight_norm"
            if not isinstance(
                part, EncodecConv1d | EncodecConvTranspose1d | torch.nn.ELU | torch.nn.Identity
            ):
                return f"it has a {type(part).__name__} after the LSTM"
    return None


class ChannelsLastDecoder(torch.nn.Module):
    """``decoder`` (an ``EncodecDecoder``, its modules shared, not copied) with the layers after
    its LSTM run channels-last, chunk by chunk. Input and output as the decoder's:
    ``[batch, hidden, frames]`` to ``[batch, channels, frames x hop]``."""

    def __init__(
        self, decoder: torch.nn.Module, chunk_frames: int = CHUNK_FRAMES, halo_frames: int = HALO_FRAMES
    ):
        super().__init__()
        why = unsupported(decoder)
        if why is not None:
            raise ValueError(f"EnCodec's decoder cannot run channels-last: {why}")
        head, tail = split(decoder)
        self.head, self.tail = torch.nn.ModuleList(head), torch.nn.ModuleList(tail)
        self.hop = math.prod(
            layer.conv.stride[0] for layer in self.tail if isinstance(layer, EncodecConvTranspose1d)
        )
        self.chunk_frames = chunk_frames
        # halo_frames=0 only to show what chunks without context get wrong (tests)
        self.halo_frames = max(halo_frames, context_frames(tail, self.hop)) if halo_frames else 0

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        for layer in self.head:
            hidden = layer(hidden)
        return self.after_lstm(hidden)

    def after_lstm(self, hidden: torch.Tensor) -> torch.Tensor:
        """The layers after the LSTM, channels-last and chunk by chunk, on the LSTM's output."""
        frames, out = hidden.shape[-1], None
        if frames == 0:
            raise ValueError("EnCodec's decoder was given no frames")
        for start in range(0, frames, self.chunk_frames):
            stop = min(start + self.chunk_frames, frames)
            low, high = max(0, start - self.halo_frames), min(frames, stop + self.halo_frames)
            x = hidden[..., low:high].unsqueeze(2).contiguous(memory_format=CHANNELS_LAST)
            for layer in self.tail:
                x = _run(layer, x)
            if x.shape[-1] != (high - low) * self.hop:  # (a decoder whose lengths do not add up)
                raise RuntimeError(f"EnCodec's layers gave {x.shape[-1]} samples for {high - low} frames")
            if out is None:
                out = hidden.new_empty((hidden.shape[0], x.shape[1], frames * self.hop))
            out[..., start * self.hop : stop * self.hop] = x[
                ..., 0, (start - low) * self.hop : (stop - low) * self.hop
            ]
        return out


def split(decoder: torch.nn.Module) -> tuple[list[torch.nn.Module], list[torch.nn.Module]]:
    """An EncodecDecoder's layers up to its LSTM (included), and after it."""
    layers = list(decoder.layers)
    cut = _after_lstm(layers)
    return layers[:cut], layers[cut:]


def context_frames(tail: list[torch.nn.Module], hop: int) -> int:
    """The frames of context a chunk needs on each side for the layers after the LSTM: at each
    chunk edge, the samples that padding or a missing neighbour reaches, followed layer by layer
    (a convolution adds its padding; a transposed one scales by its stride and adds what it
    trims from the other side), over the samples a frame becomes. musicgen-small's EnCodec:
    482 samples, under one frame of 640."""
    left = right = 0
    for layer in tail:
        left, right = _edges(layer, left, right)
    return math.ceil(max(left, right) / hop)


def _edges(layer: torch.nn.Module, left: int, right: int) -> tuple[int, int]:
    if isinstance(layer, EncodecResnetBlock):
        block = (left, right)
        for part in layer.block:
            block = _edges(part, *block)
        short = _edges(layer.shortcut, left, right)
        return max(block[0], short[0]), max(block[1], short[1])
    if isinstance(layer, EncodecConvTranspose1d):
        stride = layer.conv.stride[0]
        trim_left, trim_right = _trims(layer)
        return left * stride + trim_right, right * stride + trim_left
    if isinstance(layer, EncodecConv1d):
        pad_left, pad_right = _pads(layer)
        return left + pad_left, right + pad_right
    return left, right  # ELU, Identity


def _pads(layer: EncodecConv1d) -> tuple[int, int]:
    """The fixed padding EncodecConv1d.forward puts on each side (before pad_for_conv1d's extra)."""
    total = int(layer.padding_total)
    return (total, 0) if layer.causal else (total - total // 2, total // 2)


def _trims(layer: EncodecConvTranspose1d) -> tuple[int, int]:
    """The samples EncodecConvTranspose1d.forward trims from each side."""
    total = layer.conv.kernel_size[0] - layer.conv.stride[0]
    right = math.ceil(total * layer.trim_right_ratio) if layer.causal else total // 2
    return total - right, right


def _after_lstm(layers: list[torch.nn.Module]) -> int:
    return next(i for i, layer in enumerate(layers) if isinstance(layer, EncodecLSTM)) + 1


def _parts(layer: torch.nn.Module) -> list[torch.nn.Module]:
    if isinstance(layer, EncodecResnetBlock):
        return [*layer.block, layer.shortcut]
    return [layer]


def _run(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One of the decoder's layers on ``x`` ``[batch, channels, 1, samples]``, as transformers computes it."""
    if isinstance(layer, EncodecResnetBlock):
        residual = x
        for part in layer.block:
            x = _run(part, x)
        return _run(layer.shortcut, residual) + x
    if isinstance(layer, torch.nn.ELU):
        return F.elu(x, layer.alpha)
    if isinstance(layer, torch.nn.Identity):
        return x
    if isinstance(layer, EncodecConvTranspose1d):
        conv = layer.conv
        y = F.conv_transpose2d(x, conv.weight.unsqueeze(2), conv.bias, (1, conv.stride[0]))
        left, right = _trims(layer)
        return y[..., left : y.shape[-1] - right]
    conv = layer.conv  # an EncodecConv1d: padded as _pad1d pads, then the convolution
    stride, dilation = conv.stride[0], conv.dilation[0]
    left, right = _pads(layer)
    right += int(layer._get_extra_padding_for_conv1d(x))
    if left or right:
        x = _pad(x, left, right, layer.pad_mode)
    return F.conv2d(
        x.contiguous(memory_format=CHANNELS_LAST),
        conv.weight.unsqueeze(2),
        conv.bias,
        (1, stride),
        0,
        (1, dilation),
    )


def _pad(x: torch.Tensor, left: int, right: int, mode: str) -> torch.Tensor:
    """``EncodecConv1d._pad1d`` on the last dimension of a 4-D tensor (reflect on a short input:
    zeros first, as transformers does)."""
    if mode != "reflect":
        return F.pad(x, (left, right, 0, 0), mode)
    length, extra = x.shape[-1], 0
    if length <= max(left, right):
        extra = max(left, right) - length + 1
        x = F.pad(x, (0, extra, 0, 0))
    padded = F.pad(x, (left, right, 0, 0), "reflect")
    return padded[..., : padded.shape[-1] - extra]
