"""MusicGen and MusicGen-Melody (transformers), mono and stereo, with long-form generation.

The engine loads a verified snapshot (safetensors, ``local_files_only=True``, no remote
code). Text MusicGen decodes through Harmonia's own loop (:mod:`harmonia.engines.decoding`:
transformers' arithmetic, the same tokens in float32, without generate()'s per-step costs);
MusicGen-Melody through transformers' ``generate``. Clips longer than the model's
window (30 s for the released checkpoints) are made like audiocraft does: the first window
is generated whole, then each extension keeps the last ``window - stride`` seconds of
tokens as context and adds ``stride`` seconds, and all tokens are decoded once at the end.
A continuation prompt is encoded to tokens with the model's EnCodec and extended the same
way. A melody is turned into a chroma (the computation of transformers'
MusicgenMelodyFeatureExtractor, on torch.stft) per window, looping the melody like audiocraft.
Four precision modes change how the decoder of the engine's own model instance computes:
``exact`` (float32, the same bytes as plain transformers), ``bf16``, ``int8`` and ``int4``.

The engine knows nothing about artifacts, files it does not read, or the UI.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from harmonia.audio import Audio, conform, from_array, is_silent, read_audio
from harmonia.calibration import Choice, choose, known
from harmonia.engines.base import (
    DTYPES,
    TOKENIZER_LOCK,
    TORCH_LOCK,
    Cancel,
    LoadedModel,
    Progress,
    Runtime,
    Steps,
    Timer,
    available_memory_bytes,
    check_memory,
    check_seed,
    choose_seed,
    open_snapshot,
    pick_device,
    pick_dtype,
    pick_threads,
    pinned_threads,
    quiet_transformers,
    seeded,
    snapshot_tokenizer,
)
from harmonia.engines.decoding import Sampling, decoder_step, sample_window
from harmonia.engines.encodec import ENCODEC_LAYOUTS, ChannelsLastDecoder
from harmonia.engines.encodec import split as split_encodec_decoder
from harmonia.engines.encodec import unsupported as channels_last_unsupported
from harmonia.errors import AudioError, RequestError
from harmonia.media import AudioTake
from harmonia.requests import MAX_PROMPT_CHARS, Limit, MusicRequest, check_decoder, check_limits
from harmonia.workbench import Workbench

TRAINED_WINDOW_S = 30.0
DEFAULT_STRIDE_SHARE = 0.6  # audiocraft: 18 s of new audio per 30 s window
log = logging.getLogger(__name__)
PRECISIONS = ("exact", "bf16", "int8", "int4")
FEW_ROWS = 2  # batch 1 with guidance; from 4 rows on, F.linear is multi-threaded and faster (measured)
MANY_ROWS = 8  # batch 4 with guidance: bf16's "rows8" path runs Harmonia's kernel up to here
PROMPT_TOKENS = 16  # the prompt the attention calibration's cross-attention reads


def _shaped(y: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor, out_features: int) -> torch.Tensor:
    """A few-row product ``y`` ``[rows, out]`` plus the bias, shaped as ``x``'s leading dims (TorchScript-able)."""
    if bias is not None:
        y = y + bias
    shape = list(x.shape[:-1])
    shape.append(out_features)
    return y.reshape(shape)


class _FewRowsLinear(torch.nn.Linear):
    """A Linear whose few-row products run as ``W @ x.T``.

    In this torch CPU build ``F.linear`` on one or two rows runs on one thread; the same
    product written as ``W @ x.T`` uses them all. Measured on musicgen-small's decoder the
    tokens and the audio are identical to ``F.linear``'s (tests/engines check it on every
    run), and decoding is about 1.9x faster. Larger inputs (the prompt) use ``F.linear``.
    Written for TorchScript too (the decoding step is compiled by it).
    """

    __constants__ = (*torch.nn.Linear.__constants__, "few_rows")  # TorchScript reads it as a constant
    few_rows = FEW_ROWS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows > self.few_rows:
            return torch.nn.functional.linear(x, self.weight, self.bias)
        return _shaped((self.weight @ x.reshape(rows, x.shape[-1]).t()).t(), self.bias, x, self.out_features)


class _RowsLinear(torch.nn.Linear):
    """A Linear whose few-row products run on Harmonia's own kernel (:mod:`harmonia.kernels`).

    float32 or bfloat16 weights as they are; each output is one dot product summed in a fixed
    order, so the bits do not depend on the thread count (they differ from ``F.linear``'s in
    the last bits). Larger inputs (the prompt) use ``F.linear``. Used only where the
    calibration measured it faster, and only where the kernel runs.
    """

    __constants__ = (*torch.nn.Linear.__constants__, "few_rows", "step_rows")
    few_rows = FEW_ROWS
    step_rows = FEW_ROWS  # a decoding step's rows (one position each) the kernel takes: rows8 raises it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        step = x.dim() == 3 and x.shape[1] == 1  # [rows, one position, width]
        if rows > self.few_rows and not (step and rows <= self.step_rows):
            return torch.nn.functional.linear(x, self.weight, self.bias)
        return torch.ops.harmonia.rows_linear(x, self.weight, self.bias)


class _Rows8Linear(_RowsLinear):
    """bf16's ``rows8`` path: Harmonia's kernel for a decoding step of up to :data:`MANY_ROWS`
    rows of one position each (batch 4 with guidance), and wherever ``rows`` runs it (up to two
    rows); ``F.linear`` for the rest (the prompt's keys and values, a continuation's prefill),
    as ``rows`` does. On a CPU without bfloat16 instructions torch's bfloat16 ``F.linear`` on 8
    rows is slower than float32's (an Intel Xeon of the Ice Lake class: 172-181 against 143-152
    ms for one step's products, measured), while the kernel reads each group of weight rows
    once for all pairs of rows. A row's bits are the same at any row count, so at batch 1
    ``rows8`` makes the bytes ``rows`` makes (under its own id)."""

    step_rows = MANY_ROWS


def _swap_linears(module: torch.nn.Module, kind: type) -> None:
    """Every plain Linear under ``module`` computes as ``kind`` (same weights, in place)."""
    for child in list(module.modules()):
        if type(child) is torch.nn.Linear:
            child.__class__ = kind


CPU_ONLY = {  # precision -> why it runs on the CPU only
    "int8": "torch's dynamic int8 kernels are CPU kernels",
    "int4": "Harmonia's 4-bit products are CPU products",
}


def check_precision(precision: str, device: torch.device) -> None:
    """A precision mode Harmonia knows, on a device that runs it (int8 and int4 run on the CPU only)."""
    if precision not in PRECISIONS:
        raise RequestError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    if precision in CPU_ONLY and device.type != "cpu":
        raise RequestError(
            f"precision {precision!r} runs on the CPU only ({CPU_ONLY[precision]}), "
            f"but the device is {device.type!r}. Use device 'cpu' with {precision}, or precision 'bf16' or "
            "'exact' on this device."
        )


class _RowwiseInt8Linear(torch.nn.Module):
    """A Linear in Harmonia's int8 scheme: int8 weights with one scale per output channel, and
    each row of the input quantised to int8 by its own scale when the product runs.

    The sums are exact integer sums, so the result is the same whichever kernel computes it:
    Harmonia's kernel (:mod:`harmonia.kernels`: AVX-512 VNNI, or its AVX2 form) where it is
    available, else :class:`_ReferenceInt8Linear`'s float64 products (exact for these integers), to the bit
    (tests/engines check both against each other). It does not depend on the thread count.
    Compared with torch.ao's dynamic int8 (one scale per weight tensor and per input tensor)
    it is closer to float32 (a scale per channel and per row).
    """

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        scales = (weight.abs().amax(1) / 127).clamp_min(torch.finfo(torch.float32).tiny)
        quantised = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("scales", scales.contiguous())
        self.register_buffer("colsum", quantised.sum(1, dtype=torch.int32))
        bias = linear.bias.detach().float().contiguous() if linear.bias is not None else None
        self.register_buffer("bias", bias)
        self._keep(quantised)

    def _keep(self, quantised: torch.Tensor) -> None:
        """Pack for the kernel: ``[O/16, I/4, 16, 4]`` (padded with zeros to multiples of 16)."""
        out_pad, in_pad = -(-self.out_features // 16) * 16, -(-self.in_features // 16) * 16
        padded = torch.zeros(out_pad, in_pad, dtype=torch.int8)
        padded[: self.out_features, : self.in_features] = quantised
        packed = padded.reshape(out_pad // 16, 16, in_pad // 4, 4).permute(0, 2, 1, 3).contiguous()
        self.register_buffer("packed", packed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.harmonia.int8_linear(x, self.packed, self.scales, self.colsum, self.bias)


def _codes(rows: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The rows' int8 codes as the kernels round them: x / scale to the nearest integer, ties to
    even, within -127..127 (only a row whose largest |x| is below about 2.3e-41 needs the bound:
    its scale is subnormal and rounds down, e.g. 2^-149 for a largest of 190 x 2^-149)."""
    return torch.round(rows / scale).clamp(-127, 127)


class _ReferenceInt8Linear(_RowwiseInt8Linear):
    """:class:`_RowwiseInt8Linear`'s arithmetic in torch, for CPUs without the kernel.

    The integer sums come from a float64 product (every partial sum below 2**53, so exact) and
    the float steps follow the kernel's order: the same bits, more slowly.
    """

    def _keep(self, quantised: torch.Tensor) -> None:
        self.register_buffer("weight", quantised)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        scale = rows.abs().amax(1, keepdim=True) / 127
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        # exact integer sums in float64, rounded once to float32 as the kernel's int32 -> float32 is;
        # a row with a NaN or an infinity stays NaN (through int32 it would become a number)
        sums = (_codes(rows, scale).double() @ self.weight.double().t()).float()
        return _shaped(sums * (self.scales[None, :] * scale), self.bias, x, self.out_features)


INT4_GROUP = 64  # inputs of a channel that share one scale in the int4 scheme


class _Int4Linear(torch.nn.Module):
    """A Linear in Harmonia's 4-bit scheme (the ``int4`` precision): each output channel's
    weights in groups of 64 inputs, each group with its own scale and its weights rounded to
    the integers -7..7 (half a byte each, plus a float32 scale per 64: 0.5625 bytes a weight);
    each row of the input quantised to int8 by its own scale when the product runs.

    Each group's sum is an exact integer sum; the float steps after it follow one fixed order
    (group sum x scale, added group after group, x the row's scale, + bias), so the result is
    the same whichever computes it: Harmonia's kernel (:mod:`harmonia.kernels`: AVX-512 VNNI, or
    its AVX2 form) where it is available, else :class:`_ReferenceInt4Linear` in torch, to the bit (tests/engines
    check both against each other). It does not depend on the thread count.
    """

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        out_pad, in_pad = -(-self.out_features // 16) * 16, -(-self.in_features // INT4_GROUP) * INT4_GROUP
        weight = torch.zeros(out_pad, in_pad)
        weight[: self.out_features, : self.in_features] = linear.weight.detach().float()
        groups = weight.reshape(out_pad, in_pad // INT4_GROUP, INT4_GROUP)
        scales = groups.abs().amax(2) / 7
        scales = torch.where(scales > 0, scales, torch.ones_like(scales))  # an all-zero group: any scale
        quantised = (
            torch.round(groups / scales[..., None]).clamp(-7, 7).to(torch.int8).reshape(out_pad, in_pad)
        )
        bias = linear.bias.detach().float().contiguous() if linear.bias is not None else None
        self.register_buffer("bias", bias)
        self._keep(quantised, scales)

    def _keep(self, quantised: torch.Tensor, scales: torch.Tensor) -> None:
        """Pack for the kernel: weights + 8 as nibbles ``[O/16, I/8, 16, 4]`` (byte k of a channel's
        four: input 8c + k low, 8c + 4 + k high) and scales ``[O/16, I/64, 16]``."""
        out_pad, in_pad = quantised.shape
        nibbles = (quantised + 8).to(torch.uint8).reshape(out_pad // 16, 16, in_pad // 8, 2, 4)
        packed = (nibbles[:, :, :, 0] | (nibbles[:, :, :, 1] << 4)).permute(0, 2, 1, 3).contiguous()
        self.register_buffer("packed", packed)
        self.register_buffer("scales", scales.reshape(out_pad // 16, 16, -1).permute(0, 2, 1).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.harmonia.int4_linear(x, self.packed, self.scales, self.bias, self.out_features)


class _ReferenceInt4Linear(_Int4Linear):
    """:class:`_Int4Linear`'s arithmetic in torch, for CPUs without the kernel: each group's
    integer sum from a float32 product (exact: a group's partial sums stay below 64 x 7 x 127,
    far below 2**24, in any order), then the kernel's float steps in its order. It keeps the
    rounded weights as float32 (4 bytes a weight, as ``exact``) and runs at about float32's
    speed or slower; a row with a NaN or an infinity gives NaN outputs, as the kernel does."""

    def _keep(self, quantised: torch.Tensor, scales: torch.Tensor) -> None:
        self.register_buffer("weight", quantised.float())  # [O_pad, I_pad], the integers -7..7
        self.register_buffer("scales", scales.contiguous())  # [O_pad, groups]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        scale = rows.abs().amax(1, keepdim=True) / 127
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        out_pad, in_pad = self.weight.shape
        groups = self.scales.shape[1]
        quantised = torch.nn.functional.pad(_codes(rows, scale), [0, in_pad - self.in_features])
        sums = torch.bmm(  # [groups, rows, out_pad]: exact integers
            quantised.reshape(rows.shape[0], groups, -1).transpose(0, 1),
            self.weight.reshape(out_pad, groups, -1).permute(1, 2, 0),
        )
        products = sums * self.scales.t().unsqueeze(1)
        total = torch.zeros(rows.shape[0], out_pad)
        for group in range(groups):  # added in the kernel's order
            total = total + products[group]
        return _shaped((total * scale)[:, : self.out_features], self.bias, x, self.out_features)


def _kernel_or_reference(product: str, kernel: type, reference: type) -> type:
    """``kernel`` where Harmonia's ``product`` runs here, else ``reference`` (the same bits in
    torch, slower; said once in the log)."""
    from harmonia.kernels import unavailable

    why = unavailable(product)
    if why is None:
        return kernel
    log.warning(
        "Harmonia's %s kernel is unavailable (%s): its torch form runs, the same bits, slower", product, why
    )
    return reference


def _quantise_linears(decoder: torch.nn.Module, product: str, kernel: type, reference: type) -> None:
    """Every Linear of the decoder as ``kernel`` where Harmonia's ``product`` runs, else as
    ``reference`` (the same bits in torch)."""
    kind = _kernel_or_reference(product, kernel, reference)
    for module in list(decoder.modules()):
        for name, child in list(module.named_children()):
            if type(child) is torch.nn.Linear:
                setattr(module, name, kind(child))
    if kind is kernel:
        _lay_out_in_step_order(decoder)


def _lay_out_in_step_order(decoder: torch.nn.Module) -> None:
    """Move the kernels' packed weights and scales into one buffer, one after another in the
    order a decoding step reads them (each layer's q, k, v, out, cross q, cross out, fc1, fc2,
    then the heads; the prompt's cross k and v last), each 64-byte aligned.

    Only where the bytes lie changes, not a bit of any result. Measured (AMD EPYC, 2 threads):
    144 int4 products of 1024 x 1024 read 27-28 GiB/s from separate tensors and 37 GiB/s as
    views of one buffer (one call over all of it: 45-53 GiB/s): the memory streams on from one
    product into the next instead of starting again at a tensor somewhere else.
    """
    layers = decoder.model.decoder.layers

    def cross(layer, *names: str) -> list[torch.nn.Module]:  # a melody decoder has no cross-attention
        attention = getattr(layer, "encoder_attn", None)
        return [getattr(attention, name) for name in names] if attention is not None else []

    order = [
        module
        for layer in layers
        for module in (
            layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.out_proj,
            *cross(layer, "q_proj", "out_proj"), layer.fc1, layer.fc2,
        )
    ] + list(decoder.lm_heads) + [m for layer in layers for m in cross(layer, "k_proj", "v_proj")]  # fmt: skip
    seen = {id(m) for m in order}
    order += [m for m in decoder.modules() if id(m) not in seen]  # anything else, in module order
    lay_out_in_one_buffer(order)


def lay_out_in_one_buffer(modules: list[torch.nn.Module]) -> None:
    """The packed weights and scales of ``modules`` (those that have them), moved into one
    buffer in this order, each 64-byte aligned, in memory numpy allocates (which asks Linux for
    huge pages); each module keeps views of it."""
    tensors = [
        (module, name) for module in modules if hasattr(module, "packed") for name in ("packed", "scales")
    ]
    sizes = [-(-getattr(m, n).numel() * getattr(m, n).element_size() // 64) * 64 for m, n in tensors]
    if not tensors:
        return
    raw = torch.from_numpy(np.empty(sum(sizes) + 64, dtype=np.uint8))  # numpy asks for huge pages
    arena = raw[(-raw.data_ptr()) % 64 :]
    offset = 0
    for (module, name), size in zip(tensors, sizes, strict=True):
        tensor = getattr(module, name)
        nbytes = tensor.numel() * tensor.element_size()
        view = arena[offset : offset + nbytes].view(tensor.dtype).view(tensor.shape)
        view.copy_(tensor)
        module._buffers[name] = view
        offset += size


def _decoder_in(decoder, dtype: torch.dtype) -> None:
    """The decoder's weights in ``dtype``, and the text encoder's states cast to it on their way
    in (the text encoder and EnCodec keep the load's dtype). Sinusoidal position tables that were
    narrower than float32 are computed again when the decoder goes to float32: a bfloat16 load's
    are bfloat16 values, and transformers computes them afresh when a sequence outgrows them, so
    a float32 decoder would see rounded positions until then and exact ones after (a melody take
    then changed between the first call and the next). A float32 load's are left as they are."""
    tables = [
        module
        for module in decoder.modules()
        if hasattr(module, "make_weights")
        and isinstance(getattr(module, "weights", None), torch.Tensor)
        and module.weights.dtype != torch.float32
    ]
    decoder.to(dtype)

    def cast_inputs(module, args, kwargs):
        if kwargs.get("encoder_hidden_states") is not None:
            kwargs["encoder_hidden_states"] = kwargs["encoder_hidden_states"].to(dtype)
        return args, kwargs

    decoder.register_forward_pre_hook(cast_inputs, with_kwargs=True)
    if dtype != torch.float32:
        return
    for module in tables:
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.float32)  # (get_embedding returns the default dtype)
        try:
            module.make_weights(module.weights.shape[0], module.embedding_dim)
        finally:
            torch.set_default_dtype(default)


def _set_precision(model, precision: str, paths: dict[str, str] | None = None):
    """Prepare the decoder of this model instance (only) for a precision mode; returns the model.

    ``paths`` are the product paths the calibration chose (or a manifest recorded); an absent
    one means torch's own.

    - exact: float32; on CPU the few-row products run as ``F.linear`` ("linear"), ``W @ x.T``
      ("matmul") or Harmonia's kernel ("rows"), as ``few_row_products`` names; on another
      device the decoder is left as transformers built it.
    - bf16: the decoder's weights in bfloat16 (text encoder and EnCodec stay float32); its
      few-row products through ``F.linear`` or Harmonia's kernel, as ``bf16_products`` names.
    - int8: the decoder's Linear layers in int8: torch.ao's dynamic quantisation ("fbgemm") or
      Harmonia's per-channel, per-row scheme ("rowwise"), as ``int8_products`` names.
    - int4: the decoder's Linear layers in Harmonia's 4-bit scheme (one path: the kernel and
      its torch stand-in compute the same bits).

    int8 and int4 quantise a float32 decoder and compute in float32 whatever the load's dtype
    (their kernels take float32 inputs); a bfloat16 load keeps its text encoder and EnCodec in
    bfloat16, and its decoder's weights are quantised from their bfloat16 values.
    """
    paths = paths or {}
    decoder = model.decoder
    if precision in ("int8", "int4") and decoder.model.decoder.layer_norm.weight.dtype != torch.float32:
        _decoder_in(decoder, torch.float32)  # float32 activations whatever the load's dtype
    if precision == "exact":
        if decoder.device.type != "cpu":
            return model
        kind = {"matmul": _FewRowsLinear, "rows": _RowsLinear}.get(paths.get("few_row_products", "linear"))
        if kind is not None:
            _swap_linears(decoder, kind)
    elif precision == "bf16":
        _decoder_in(decoder, torch.bfloat16)
        for head in decoder.lm_heads:
            head.register_forward_hook(lambda module, inputs, output: output.float())
        kind = {"rows": _RowsLinear, "rows8": _Rows8Linear}.get(paths.get("bf16_products", "linear"))
        if kind is not None:
            _swap_linears(decoder, kind)
    elif precision == "int8" and paths.get("int8_products") == "rowwise":
        _quantise_linears(decoder, "int8_linear", _RowwiseInt8Linear, _ReferenceInt8Linear)
    elif precision == "int4":
        _quantise_linears(decoder, "int4_linear", _Int4Linear, _ReferenceInt4Linear)
    elif precision == "int8":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's deprecation notice for quantize_dynamic
            model.decoder = torch.ao.quantization.quantize_dynamic(
                decoder, {torch.nn.Linear}, dtype=torch.qint8
            )
    return model


INT8_PATHS = ("fbgemm", "rowwise")


def _choose_int8_products(state_dir: Path, decoder: torch.nn.Module, shape: str) -> Choice:
    """torch.ao's fbgemm int8 or Harmonia's rowwise int8 for the decoder, whichever is faster here.

    Both run every Linear of the decoder once on the same two rows (one decoding step's
    products at batch 1 with guidance), each built from the float32 weights. They quantise
    differently, so their results differ by quantisation error, not rounding: the path is part
    of the artifact id and ``reproduce`` replays it (rowwise runs anywhere, the kernel where it
    can, else a slower float64 form of the same bits). A path further than 1/8 of the largest
    value from fbgemm's (a broken product, not a quantisation difference) is never chosen.
    """
    import warnings

    linears = [m for m in decoder.modules() if type(m) is torch.nn.Linear]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fbgemm = list(
            torch.ao.quantization.quantize_dynamic(
                torch.nn.Sequential(*linears), {torch.nn.Linear}, dtype=torch.qint8
            )
        )
    kind = _kernel_or_reference("int8_linear", _RowwiseInt8Linear, _ReferenceInt8Linear)
    rowwise = [kind(m) for m in linears]
    generator = torch.Generator().manual_seed(0)
    inputs = {
        width: torch.randn(FEW_ROWS, width, generator=generator) for width in {m.in_features for m in linears}
    }
    with torch.inference_mode():
        return choose(
            state_dir, "int8_products", shape,
            {
                "fbgemm": lambda: [m(inputs[m.in_features]) for m in fbgemm],
                "rowwise": lambda: [m(inputs[m.in_features]) for m in rowwise],
            },
            "fbgemm",
            agree=lambda a, b: bool((a - b).abs().max() <= b.abs().max() / 8),
        )  # fmt: skip


FEW_ROW_PATHS = ("linear", "matmul", "rows")
BF16_PATHS = ("linear", "rows", "rows8")


def _decoder_shape(config: dict) -> str:
    """What the few-row products' speed depends on, from config.json's decoder entry ("fc2 fed by
    fc1": measured with each path's own fc1 output as fc2's input, as a step runs; choices cached
    before that fed every product a fresh input and are measured again)."""
    d = config["decoder"]
    return (
        f"{FEW_ROWS} rows, {d['num_hidden_layers']} layers of {d['hidden_size']}/{d.get('ffn_dim')}, "
        f"{d['num_codebooks']} heads of {d['vocab_size']}, fc2 fed by fc1"
    )


def _bfloat16_decoder(precision: str) -> bool:
    """Whether a load of this precision runs its decoder in bfloat16 (its attention kernel's
    cache is then the decoder's own values: the path "own", never "own-bf16" or "own-int8"). Of the modes
    that choose an attention path, only bf16 does: int8 and int4 compute in float32 whatever
    the load's dtype."""
    return precision == "bf16"


def _product_shape(config: dict, which: str, precision: str, dtype: str | None) -> str:
    """What a path's speed depends on besides the CPU, torch and threads: the decoder's shape
    (for attention: its heads, and the dtype of the cache), and which of Harmonia's kernels for
    it run here (a machine whose build failed, or a CPU of the same name without them, measures
    again instead of reading a choice it cannot run; the product kernels for products, so the
    attention kernel's arrival left their cached choices as they were). bf16's products are
    measured on eight rows as well (choices cached before ``rows8`` are measured again)."""
    from harmonia.kernels import NEEDS, form, unavailable

    if which == "encodec_layout":
        return _encodec_layout_shape(config, dtype)
    mine = [k for k in NEEDS if (k == "decode_attention") == (which == "attention")]
    kernels = (
        ", ".join(
            product + (" (AVX2 form)" if form(product) == "avx2" else "")  # another speed: its own key
            for product in mine
            if unavailable(product) is None
        )
        or "none"
    )
    if which == "attention":
        d = config["decoder"]
        # the kernel's cache: a bfloat16 decoder's own values, or a float32 decoder's rounded to
        # bfloat16 ("own-bf16") or int8 ("own-int8"; choices cached when int8 and int4 measured the
        # kernel on a float32 cache, or on bfloat16 alone, are measured again)
        cache = "bfloat16" if _bfloat16_decoder(precision) else "float32 decoder's bfloat16 or int8"
        return (
            f"{FEW_ROWS} rows, {d['num_hidden_layers']} layers of {d['num_attention_heads']} heads of "
            f"{d['hidden_size'] // d['num_attention_heads']}, a {cache} cache of 64 and 512 keys and a "
            f"prompt of {PROMPT_TOKENS} | "
            f"Harmonia's kernels: {kernels}"
        )
    also = f" and {MANY_ROWS} rows" if which == "bf16_products" else ""
    return f"{_decoder_shape(config)}{also} | Harmonia's kernels: {kernels}"


def _choose_few_row_products(state_dir: Path, decoder: torch.nn.Module, shape: str) -> Choice:
    """``F.linear``, ``W @ x.T`` or Harmonia's kernel for the float32 decoder's two-row products,
    whichever is fastest here.

    Each runs every Linear of the decoder once on the same two rows (one decoding step's
    products at batch 1 with guidance). They sum in different orders, so their products
    differ in the last bits (measured here: up to 2e-6 on musicgen-small's widths); the
    sampled tokens, and so the audio, are the same as plain transformers' (the engine tests
    check tokens and audio against transformers on every run), yet a draw could flip on a
    rare step, so the path is part of the artifact id and ``reproduce`` replays it. A path
    whose products are further off than rounding (1e-4 of the largest value) is never chosen.
    Measured once per CPU model, torch version, thread count and decoder shape, then cached.
    """
    return _choose_float_products(state_dir, decoder, shape, "few_row_products", 1e-4)


def _choose_bf16_products(state_dir: Path, decoder: torch.nn.Module, shape: str) -> Choice:
    """``F.linear`` or Harmonia's kernel for the bfloat16 decoder's products: ``rows`` for two
    rows (batch 1 with guidance), ``rows8`` for up to eight (batch 4). Each candidate runs one
    step's products on two rows and again on eight, the way it would (``rows`` through
    ``F.linear`` on eight), and the sum decides: a batch-1 step and a batch-4 step weigh the
    same (so ``rows``' gain over ``linear`` counts against both, and a machine may keep
    ``linear`` where a two-row measurement alone picked ``rows``). Both sum in float32 and round once to
    bfloat16; a path further than 1/64 of the largest value from ``F.linear``'s is never chosen."""
    return _choose_float_products(state_dir, decoder, shape, "bf16_products", 1 / 64, many=True)


def _choose_float_products(
    state_dir: Path, decoder: torch.nn.Module, shape: str, name: str, tolerance: float, many: bool = False
) -> Choice:
    from harmonia.kernels import unavailable

    named = [(name, m) for name, m in decoder.named_modules() if type(m) is torch.nn.Linear]
    dtype = named[0][1].weight.dtype
    generator = torch.Generator().manual_seed(0)
    widths = sorted({m.in_features for _, m in named})
    fed_rows = {
        rows: {w: torch.randn(rows, w, generator=generator).to(dtype) for w in widths}
        for rows in ((FEW_ROWS, MANY_ROWS) if many else (FEW_ROWS,))
    }

    def step(product, rows: int = FEW_ROWS) -> list[torch.Tensor]:
        """Every product once, each fc2 fed with gelu of its own layer's fc1 output, as a step
        runs: a path's output layout is its next product's input layout (W @ x.T returns a
        transposed view, and W @ x.T on such an input is about 3x slower, measured)."""
        out, fed, inputs = [], {}, fed_rows[rows]
        for name, m in named:
            x = torch.nn.functional.gelu(fed.pop(name[:-1] + "1")) if name.endswith(".fc2") else None
            y = product(m, inputs[m.in_features] if x is None else x)
            if name.endswith(".fc1"):
                fed[name] = y
            out.append(y)
        return out

    def plain(m: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, m.weight, m.bias)

    def matmul(m: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        y = (m.weight @ x.t()).t()  # as _FewRowsLinear.forward computes it
        return y + m.bias if m.bias is not None else y

    def rows(m: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.harmonia.rows_linear(x, m.weight, m.bias)

    candidates = {"linear": lambda: step(plain)}
    if dtype == torch.float32:
        candidates["matmul"] = lambda: step(matmul)
    if unavailable("rows_linear") is None:
        candidates["rows"] = lambda: step(rows)
    if many:  # each path as it runs eight rows too
        candidates["linear"] = lambda: step(plain) + step(plain, MANY_ROWS)
        if "rows" in candidates:
            candidates["rows"] = lambda: step(rows) + step(plain, MANY_ROWS)
            candidates["rows8"] = lambda: step(rows) + step(rows, MANY_ROWS)
    with torch.inference_mode():
        return choose(
            state_dir, name, shape, candidates, "linear",
            agree=lambda a, b: bool((a.float() - b.float()).abs().max() <= tolerance * b.float().abs().max()),
        )  # fmt: skip


# "own": Harmonia's kernel over a cache in the decoder's dtype; "own-bf16": over a bfloat16 cache;
# "own-int8": over an int8 cache (codes and a float32 scale per row)
ATTENTION_PATHS = ("sdpa", "own", "own-bf16", "own-int8")


def _choose_attention(state_dir: Path, decoder: torch.nn.Module, shape: str) -> Choice:
    """torch's SDPA or Harmonia's kernel for a decoding step's attention (bf16, int8 and int4 on CPU).

    Each candidate runs a step's attention as the step does, for one position of two rows
    (batch 1 with guidance): every layer's self-attention over a cache of 64 keys and again
    over 512 (a clip of 1 s and of 10 s), and every layer's cross-attention over a prompt of 16
    tokens (the guidance row's prompt empty: masked whole), keeping the cache as it would:
    float32 for SDPA, bfloat16 or int8 for the kernel. The kernel's candidate is "own" for a
    bfloat16 decoder (its cache is exactly what its projections return); int8's and int4's
    float32 decoders have two: "own-bf16" (their keys and values rounded to bfloat16 as they are
    stored: half the bytes; on musicgen-small's architecture the rounding alone moved float32
    weights' logits 0.0004 from float32's cache, and it took int4's and int8's distance from
    float32's logits from 0.29483 to 0.29488 and from 0.03079 to 0.03087) and "own-int8" (int8
    codes and a scale per row: 68 bytes of bfloat16's 128 for heads of 64; the prompt's keys and
    values stay bfloat16), whose cost in logits ``benchmarks/bench_kv_cache.py`` measures too.
    (Measured without the prompt, SDPA and the kernel came within the 10 % rule on an Intel Xeon
    whose whole steps ran 4-20 % faster on the kernel.) They sum in different orders, so the path
    is part of the artifact id and ``reproduce`` replays it; the candidates read the same values
    (int8 codes times a power of two, one code of each row 127: every cache holds them exactly, and
    own-int8's kernel rounds such a query to int8 exactly),
    and a kernel further than rounding from SDPA's on them (1e-4 of the largest value) is never
    chosen: the check tests the kernel, not the rounding of a cache (that is the benchmark's to
    measure). ``exact`` keeps SDPA, the plain library's attention, always."""
    from harmonia.kernels import int8_stored, unavailable

    layer = decoder.model.decoder.layers[0].self_attn
    layers, heads, dim = len(decoder.model.decoder.layers), layer.num_heads, layer.head_dim
    kept = torch.bfloat16  # the kernel's cache on "own" and "own-bf16" (and the prompt's on "own-int8")
    float32 = decoder.model.decoder.layer_norm.weight.dtype == torch.float32
    generator = torch.Generator().manual_seed(0)
    lengths = (64, 512)

    def draw(*size: int) -> torch.Tensor:  # values every cache holds exactly (see above)
        codes = torch.randint(-127, 128, size, generator=generator)
        codes[..., 0] = 127
        return codes.float() * 2.0**-5

    query = draw(FEW_ROWS, heads, 1, dim)
    cache = [
        (draw(FEW_ROWS, heads, lengths[-1], dim), draw(FEW_ROWS, heads, lengths[-1], dim))
        for _ in range(layers)
    ]
    prompt = [
        (draw(FEW_ROWS, heads, PROMPT_TOKENS, dim), draw(FEW_ROWS, heads, PROMPT_TOKENS, dim))
        for _ in range(layers)
    ]
    mask = torch.ones(FEW_ROWS, 1, 1, PROMPT_TOKENS, dtype=torch.bool)
    mask[FEW_ROWS // 2 :] = False  # guidance's empty prompt
    own = [(k.to(kept), v.to(kept)) for k, v in cache]
    own_prompt = [(k.to(kept), v.to(kept)) for k, v in prompt]

    def every_call(caches, prompts, own_self, own_prompt) -> Callable[[], list[torch.Tensor]]:
        """A candidate: every layer's self-attention at each length, then its cross-attention."""
        return lambda: [
            out
            for n in lengths
            for (k, v), (pk, pv) in zip(caches, prompts, strict=True)
            for out in (own_self(k, v, n), own_prompt(pk, pv))
        ]

    def sdpa_self(k, v, n):
        return torch.nn.functional.scaled_dot_product_attention(
            query, k[:, :, :n], v[:, :, :n], scale=layer.scaling
        )

    def sdpa_prompt(k, v):
        return torch.nn.functional.scaled_dot_product_attention(
            query, k, v, attn_mask=mask, scale=layer.scaling
        )

    def kernel_self(k, v, n):
        return torch.ops.harmonia.decode_attention(query, k, v, n, layer.scaling, None)

    def kernel_prompt(k, v):
        return torch.ops.harmonia.decode_attention(query, k, v, PROMPT_TOKENS, layer.scaling, mask)

    candidates = {"sdpa": every_call(cache, prompt, sdpa_self, sdpa_prompt)}
    if unavailable("decode_attention") is None and not float32:
        candidates["own"] = every_call(own, own_prompt, kernel_self, kernel_prompt)
    elif unavailable("decode_attention") is None:
        candidates["own-bf16"] = every_call(own, own_prompt, kernel_self, kernel_prompt)
        int8 = [(int8_stored(k, keys=True), int8_stored(v, keys=False)) for k, v in cache]
        candidates["own-int8"] = every_call(int8, own_prompt, kernel_self, kernel_prompt)
    with torch.inference_mode():
        return choose(
            state_dir, "attention", shape, candidates, "sdpa",
            agree=lambda a, b: bool((a - b).abs().max() <= 1e-4 * b.abs().max()),
        )  # fmt: skip


# the frames the audio decoder's calibration decodes after the LSTM (2 s at MusicGen's 50 a second)
ENCODEC_FRAMES = 100


def _encodec_layout_shape(config: dict, dtype: str | None) -> str:
    """What the EnCodec layout's speed and agreement depend on besides the CPU, torch and threads:
    EnCodec's shape, how its convolutions are normalised (channels-last runs weight_norm's only)
    and its dtype."""
    a = config["audio_encoder"]
    return (
        f"EnCodec decoder of {a.get('hidden_size')} to {a.get('audio_channels')} channel(s), "
        f"{a.get('num_filters')} filters, ratios {a.get('upsampling_ratios')}, "
        f"{a.get('norm_type', 'weight_norm')}, {dtype or 'float32'}, {ENCODEC_FRAMES} frames"
    )


def _choose_encodec_layout(state_dir: Path, decoder: torch.nn.Module, shape: str) -> Choice:
    """transformers' EnCodec decoder or :class:`~harmonia.engines.encodec.ChannelsLastDecoder`
    (bf16, int8 and int4 on CPU), whichever runs the layers after the LSTM (the part they run
    differently) on :data:`ENCODEC_FRAMES` frames faster here.

    Both decode the same random frames; channels-last differs by rounding (oneDNN's order of sums),
    and one further than 1e-4 of the largest sample is never chosen. A decoder it cannot run
    (convolutions normalised otherwise than by weight_norm) keeps transformers'. The frames are
    one chunk, measured in 3.6 s on musicgen-small's EnCodec (Intel Xeon, Ice Lake, 2 threads:
    129-141 ms against 195-204); on longer takes channels-last gains more (the whole decoder
    1.6-1.7x faster on 500 frames and 1.8-1.9x on 1500, where transformers' tensors outgrow the
    caches)."""
    generator = torch.Generator().manual_seed(0)
    head, tail = split_encodec_decoder(decoder)
    weight = head[0].conv.weight
    hidden = torch.randn(1, weight.shape[1], ENCODEC_FRAMES, generator=generator).to(weight.dtype)
    with torch.inference_mode():
        for layer in head:  # the same for both: run once
            hidden = layer(hidden)

    def plain() -> list[torch.Tensor]:
        x = hidden
        for layer in tail:
            x = layer(x)
        return [x]

    candidates = {"torch": plain}
    if channels_last_unsupported(decoder) is None:
        fast = ChannelsLastDecoder(decoder)
        candidates["channels-last"] = lambda: [fast.after_lstm(hidden)]
    with torch.inference_mode():
        return choose(
            state_dir, "encodec_layout", shape, candidates, "torch",
            agree=lambda a, b: bool((a.float() - b.float()).abs().max() <= 1e-4 * b.float().abs().max()),
        )  # fmt: skip


# precision -> the calibrated choices of its decoding step (products, then attention) and of its
# audio decoder, each by what it is named in the runtime; attention only where Harmonia's own loop
# decodes (text MusicGen); exact keeps transformers' EnCodec (its bytes are the promise)
CHOICES = {
    "exact": ("few_row_products",),
    "bf16": ("bf16_products", "attention", "encodec_layout"),
    "int8": ("int8_products", "attention", "encodec_layout"),
    "int4": ("attention", "encodec_layout"),
}
CHOOSERS = {
    "few_row_products": _choose_few_row_products,
    "bf16_products": _choose_bf16_products,
    "int8_products": _choose_int8_products,
    "attention": _choose_attention,
    "encodec_layout": _choose_encodec_layout,
}
PRODUCT_PATHS = {
    "few_row_products": FEW_ROW_PATHS,
    "bf16_products": BF16_PATHS,
    "int8_products": INT8_PATHS,
    "attention": ATTENTION_PATHS,
    "encodec_layout": ENCODEC_LAYOUTS,
}
# precision -> the paths it ran before it had a choice (torch's own products and attention,
# transformers' EnCodec layout): left out of ids, replayed for manifests that name none, and all
# that a schema-1 id can have run
BEFORE_CHOICES = {
    "bf16": (("bf16_products", "linear"), ("attention", "sdpa"), ("encodec_layout", "torch")),
    "int8": (("int8_products", "fbgemm"), ("attention", "sdpa"), ("encodec_layout", "torch")),
    "int4": (("attention", "sdpa"), ("encodec_layout", "torch")),
}
KERNEL_PATHS = {
    ("few_row_products", "rows"): "rows_linear",
    ("bf16_products", "rows"): "rows_linear",
    ("bf16_products", "rows8"): "rows_linear",
    ("attention", "own"): "decode_attention",
    ("attention", "own-bf16"): "decode_attention",
    ("attention", "own-int8"): "decode_attention",
}


def _choices(precision: str, model_type: str | None) -> tuple[str, ...]:
    """The calibrated choices a CPU load of this precision makes (a melody model decodes through
    transformers' generate(), so it has no attention to choose)."""
    return tuple(c for c in CHOICES.get(precision, ()) if c != "attention" or model_type == "musicgen")


def _check_product_path(which: str, path: str) -> None:
    """A recorded or forced path this machine can run (Harmonia's float kernels need AVX-512 or,
    in their AVX2 form of the same bits, AVX2 with FMA; its int8 and int4 schemes run everywhere,
    on the kernel or in torch)."""
    from harmonia.kernels import unavailable

    if path not in PRODUCT_PATHS[which]:
        raise RequestError(f"{which} must be one of {', '.join(PRODUCT_PATHS[which])}, got {path!r}.")
    product = KERNEL_PATHS.get((which, path))
    why = unavailable(product) if product else None
    if why is not None:
        raise RequestError(
            f"This run needs Harmonia's {product} kernel ({which}: {path}), but {why}. Run it on an x86-64 "
            "CPU with AVX-512, or AVX2 and FMA, and a C++ compiler, or ask for another path (a new artifact)."
        )


def _fold_weight_norm(module: torch.nn.Module) -> None:
    """Store EnCodec's weight-normed conv weights once instead of recomputing them on every call.

    ``remove_parametrizations(leave_parametrized=True)`` keeps the value the parametrization
    computes (the same ``torch._weight_norm`` call), so the audio is unchanged to the bit; it
    saves about 45 ms per generation on musicgen-small's EnCodec (measured).
    """
    from torch.nn.utils import parametrize

    for child in module.modules():
        if parametrize.is_parametrized(child, "weight"):
            parametrize.remove_parametrizations(child, "weight", leave_parametrized=True)


@dataclass(frozen=True, eq=False)
class MusicResult:
    """What a generation produced."""

    # the audio
    audio: np.ndarray  # float32 [batch, channels, samples]
    sample_rate: int
    # the request as run (with its seed) and the inputs it read
    request: MusicRequest
    melody: Audio | None
    continuation: Audio | None
    # how it ran
    steps: int  # decoding steps, all windows together
    generate_s: float
    window_s: float
    stride_s: float | None  # None when one window sufficed
    windows: int
    codes: torch.Tensor = field(repr=False)  # [batch, codebooks, frames]

    @property
    def duration_s(self) -> float:
        return self.audio.shape[-1] / self.sample_rate

    @property
    def real_time_factor(self) -> float:
        """Seconds of audio made per second of compute (per clip; above 1 is faster than real time)."""
        return self.duration_s / self.generate_s if self.generate_s > 0 else math.inf

    @property
    def takes(self) -> tuple[AudioTake, ...]:
        """One audio take ``[channels, samples]`` per prompt."""
        return tuple(
            AudioTake(samples, self.sample_rate, prompt)
            for samples, prompt in zip(self.audio, self.request.prompts, strict=True)
        )

    @property
    def inputs(self) -> dict[str, Audio | None]:
        """The media inputs as read (role -> Audio)."""
        return {"melody": self.melody, "continuation": self.continuation}

    def details(self) -> dict[str, Any]:
        """What the manifest's engine entry records of this run."""
        return {"long_form": {"windows": self.windows, "window_s": self.window_s, "stride_s": self.stride_s}}


class _StepWatch(StoppingCriteria):
    """Sees the token sequence after every decoding step (reporting progress) and keeps the last one.

    A stopping criterion is the hook transformers calls once per step with the whole
    sequence; this one never stops generation itself (an exception from ``on_step`` does).
    """

    def __init__(self, on_step):
        self.on_step = on_step
        self.sequence: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        self.sequence = input_ids
        self.on_step()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class MusicGenEngine:
    """A loaded MusicGen or MusicGen-Melody model.

    Example:
        >>> engine = MusicGenEngine.load(Workbench.open(), "tiny-musicgen")  # doctest: +SKIP
        >>> result = engine.generate(MusicRequest("lofi beat", duration_s=2, seed=0))  # doctest: +SKIP
        >>> result.audio.shape, result.sample_rate  # doctest: +SKIP
        ((1, 1, 64000), 32000)
    """

    name: ClassVar[str] = "musicgen"
    kind: ClassVar[str] = "music"
    code_version: ClassVar[int] = 1  # bump when a change here changes output bytes
    packages: ClassVar[tuple[str, ...]] = ("torch", "transformers", "tokenizers", "numpy")
    request_type: ClassVar[type] = MusicRequest
    precisions: ClassVar[tuple[str, ...]] = PRECISIONS

    def __init__(
        self,
        model,
        tokenizer,
        loaded: LoadedModel,
        chroma_settings: dict | None,
        step: torch.nn.Module | None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.loaded = loaded
        self.device = torch.device(loaded.device)
        self._chroma_settings = chroma_settings
        self._chroma_filters: torch.Tensor | None = None
        self._step = step  # Harmonia's decoding step (text models); melody models use generate()
        decoder = model.config.decoder
        self.sample_rate: int = model.config.audio_encoder.sampling_rate
        self.frame_rate: int = model.config.audio_encoder.frame_rate
        self.channels: int = decoder.audio_channels
        self.num_codebooks: int = decoder.num_codebooks
        self.max_delay: int = decoder.num_codebooks // decoder.audio_channels - 1
        self.window_frames: int = min(
            round(TRAINED_WINDOW_S * self.frame_rate), decoder.max_position_embeddings - decoder.num_codebooks
        )

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        wb: Workbench,
        name: str,
        runtime: Runtime | None = None,
        allow_pickle: bool = False,
        **settings: Any,
    ) -> MusicGenEngine:
        """Load a declared, present and verified MusicGen snapshot.

        Args:
            wb: the workbench.
            name: a model name from params.yaml.
            runtime: device, dtype, threads and precision (or give them as keywords):
                device "auto" (default: cuda, then mps, then cpu), "cpu", "cuda", "cuda:N", "mps";
                dtype "float32" (default, the reproducible choice), "bfloat16", "float16" (GPU only);
                threads for every generate() call (default: torch's current setting; the thread
                count changes the bits of CPU results, so it is recorded); precision "exact"
                (float32; the same tokens and audio as plain transformers, faster), "bf16"
                (decoder in bfloat16), "int8" or "int4" (decoder Linear layers quantised to 8
                or 4 bits, CPU only), each deterministic for a seed, recorded and part of the
                artifact id.
            allow_pickle: accept a snapshot with pickled weights (never needed for released MusicGen).
        """
        runtime = runtime or Runtime(**settings)
        device, dtype, threads, precision = runtime.device, runtime.dtype, runtime.threads, runtime.precision
        chosen = pick_device(device)
        check_precision(precision, chosen)
        from transformers import (
            AutoTokenizer,
            MusicgenForConditionalGeneration,
            MusicgenMelodyForConditionalGeneration,
        )

        classes = {
            "musicgen": MusicgenForConditionalGeneration,
            "musicgen_melody": MusicgenMelodyForConditionalGeneration,
        }
        with TORCH_LOCK, Timer() as timer:
            spec, path, inventory = open_snapshot(wb, name, "musicgen", allow_pickle)
            dtype = pick_dtype(dtype, chosen)
            threads = pick_threads(threads)
            model_type = json.loads((path / "config.json").read_text()).get("model_type")
            if model_type not in classes:
                raise RequestError(
                    f"Model '{name}' is a {model_type!r} model; the musicgen engine runs {', '.join(classes)}."
                )
            with pinned_threads(threads), quiet_transformers():
                model = classes[model_type].from_pretrained(
                    path,
                    local_files_only=True,
                    use_safetensors=not allow_pickle,
                    trust_remote_code=False,
                    dtype=DTYPES[dtype],
                )
            model, choices, paths = model.to(chosen).eval(), {}, {}
            _fold_weight_norm(model.audio_encoder)  # (before the audio decoder's paths are measured)
            if precision == "bf16":  # the paths are measured on the weights the decoder will run
                model.decoder.to(torch.bfloat16)
            elif precision in ("int8", "int4") and model.decoder.dtype != torch.float32:
                _decoder_in(model.decoder, torch.float32)  # (once: _set_precision finds it float32)
            for which in _choices(precision, model_type) if chosen.type == "cpu" else ():  # faster paths here
                recorded = dict(runtime.paths).get(which)
                if recorded is not None:  # replayed from a manifest, or fixed by generate()
                    choice = Choice(which, recorded, "recorded", {})
                else:  # forced by the environment, cached for this CPU, or measured now
                    shape = _product_shape(
                        json.loads((path / "config.json").read_text()), which, precision, dtype
                    )
                    choice = known(wb.state_dir, which, shape, threads, PRODUCT_PATHS[which])
                    if choice is None:
                        with pinned_threads(threads):
                            measured = (
                                model.audio_encoder.decoder if which == "encodec_layout" else model.decoder
                            )
                            choice = CHOOSERS[which](wb.state_dir, measured, shape)
                choices[choice.name], paths[which] = choice.describe(), choice.path
                _check_product_path(which, choice.path)
                if choice.path == "own-bf16" and _bfloat16_decoder(precision):
                    raise RequestError(
                        "attention own-bf16 rounds a float32 decoder's keys and values to bfloat16; this "
                        "decoder is bfloat16 already (precision bf16), and its kernel path is own. Set "
                        "HARMONIA_ATTENTION to own or auto."
                    )
                if choice.path == "own-int8" and _bfloat16_decoder(precision):
                    raise RequestError(
                        "attention own-int8 keeps a float32 decoder's keys and values in int8 (precision "
                        "int8 or int4); this decoder is bfloat16 (precision bf16), and its kernel path is "
                        "own. Set HARMONIA_ATTENTION to own or auto."
                    )
            model = _set_precision(model, precision, paths)
            if paths.get("encodec_layout") == "channels-last":
                why = channels_last_unsupported(model.audio_encoder.decoder)
                if why is not None:
                    raise RequestError(
                        f"This run needs EnCodec's decoder channels-last (encodec_layout: channels-last), but {why}. "
                        "Set HARMONIA_ENCODEC_LAYOUT to torch (a new artifact)."
                    )
                model.audio_encoder.decoder = ChannelsLastDecoder(model.audio_encoder.decoder)
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            chroma, step = None, None
            if model_type == "musicgen_melody":
                chroma = json.loads((path / "preprocessor_config.json").read_text())
            else:  # compiled once, inside the load time (about 1 s for musicgen-small)
                step = decoder_step(model, paths.get("attention", "sdpa"))
        loaded = LoadedModel(
            name, path, spec, inventory, str(chosen), dtype, threads, timer.seconds, precision, choices
        )
        return cls(model, tokenizer, loaded, chroma, step)

    @property
    def takes_melody(self) -> bool:
        return self._chroma_settings is not None

    @property
    def window_s(self) -> float:
        return self.window_frames / self.frame_rate

    def describe(self) -> dict:
        """The manifest's engine entry."""
        return {
            "name": self.name,
            "class": type(self.model).__name__,
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "frame_rate": self.frame_rate,
            "codebooks": self.num_codebooks,
            "window_s": self.window_s,
        }

    # -- checks ----------------------------------------------------------------------------
    @classmethod
    def check_runtime(cls, runtime: Runtime) -> None:
        """The precision mode exists and runs on the device (int8 and int4 are CPU only)."""
        check_precision(runtime.precision, pick_device(runtime.device))

    @classmethod
    def check(cls, request: MusicRequest, snapshot: Path) -> MusicRequest:
        """Every check that needs no loaded model (the snapshot's config.json is enough).

        Returns the request with its seed (drawn when None) and its audio inputs read.
        """
        config, frame_rate, frames = _config_facts(snapshot)
        melody_model = config.get("model_type") == "musicgen_melody"
        request, melody, _ = _check_request(request, snapshot.name, melody_model, frames / frame_rate)
        if melody is not None:  # keep (and hash) only the span of the melody the model can read
            chunk_s = json.loads((snapshot / "preprocessor_config.json").read_text())["chunk_length"]
            request = replace(request, melody=used_span(melody, request.duration_s + chunk_s + 1.0))
        return request

    @classmethod
    def check_resources(cls, request: MusicRequest, snapshot: Path) -> None:
        """What a generation needs that a cache hit does not: memory, and prompts the encoder reads whole."""
        config, frame_rate, frames = _config_facts(snapshot)
        per_take = _bytes_per_take(config, request, frames, frame_rate)
        weights = sum(p.stat().st_size for p in snapshot.glob("*.safetensors"))
        takes = len(request.prompts)
        check_memory(
            weights + takes * per_take,
            f"{takes} prompt(s) of {request.duration_s:g} s",
            f"give at most {max((int(available_memory_bytes() or 0) - weights) // per_take, 0)} prompts per "
            "request (the pipeline's music.batch_size), or shorter clips.",
        )
        with TOKENIZER_LOCK:  # a fast tokenizer is not safe to share between threads
            tokenizer = snapshot_tokenizer(snapshot)
            counts = [len(tokenizer(prompt)["input_ids"]) for prompt in request.prompts]
        for i, count in enumerate(counts):  # the tokenizer would cut a longer prompt silently
            if count > tokenizer.model_max_length:
                raise RequestError(
                    f"prompts[{i}] is {count} tokens long; the model's text encoder reads at most "
                    f"{tokenizer.model_max_length}. Shorten it."
                )

    @classmethod
    def fast_paths(
        cls, wb: Workbench, snapshot: Path, runtime: Runtime
    ) -> tuple[tuple[str, str], ...] | None:
        """The paths a load would take, known without loading (None: the load must measure them)."""
        if torch.device(runtime.device).type != "cpu":
            return ()
        config, _, _ = _config_facts(snapshot)
        recorded, paths = dict(runtime.paths), []
        for name in _choices(runtime.precision, config.get("model_type")):
            if name in recorded:
                paths.append((name, recorded[name]))
                continue
            shape = _product_shape(config, name, runtime.precision, runtime.dtype)
            choice = known(wb.state_dir, name, shape, runtime.threads, PRODUCT_PATHS[name])
            if choice is None:
                return None
            paths.append((name, choice.path))
        return tuple(sorted(paths))  # in the order LoadedModel.paths gives them (part of an engine's key)

    @classmethod
    def identity_paths(cls, runtime) -> dict[str, str]:
        """The paths the artifact id names: what bf16 and int8 ran before they had a choice
        (:data:`BEFORE_CHOICES`) is left out, so ids made then stay the ids of the same bytes."""
        before = set(BEFORE_CHOICES.get(runtime.precision, ()))
        return {name: path for name, path in runtime.paths if (name, path) not in before}

    @classmethod
    def replayed_paths(cls, runtime) -> dict[str, str]:
        """The fast paths a manifest's runtime ran: bf16 and int8 manifests made before those
        modes had a choice name none, and ran :data:`BEFORE_CHOICES`."""
        paths = dict(runtime.paths)
        if torch.device(runtime.device).type == "cpu":
            for name, path in BEFORE_CHOICES.get(runtime.precision, ()):
                paths.setdefault(name, path)
        return paths

    @classmethod
    def legacy_identity(cls, identity: dict[str, Any], runtime: Runtime) -> dict[str, Any] | None:
        """What a schema-1 Harmonia hashed for this request (MusicGen without parents), so artifacts
        made before schema 2 stay cache hits. Exact on a CPU always ran ``W @ x.T`` then, one of
        the two paths exact takes now: such an artifact answers the request whichever path this
        machine would pick, and ``reproduce`` replays ``W @ x.T`` for it."""
        if identity["parents"] or cls.code_version != 1 or runtime.precision == "int4":
            return None  # (schema 1 had no int4)
        recorded = dict(runtime.paths)
        if any(recorded.get(name, path) != path for name, path in BEFORE_CHOICES.get(runtime.precision, ())):
            return None  # schema 1 knew only torch's own bf16 and int8 products, and SDPA
        legacy_runtime = {k: identity["runtime"][k] for k in ("device", "dtype", "threads")}
        if runtime.precision != "exact":
            legacy_runtime["precision"] = runtime.precision
        packages = {k: identity["packages"][k] for k in ("torch", "transformers", "numpy", "soundfile")}
        return {
            "schema": "harmonia.manifest/1",
            "kind": "music",
            "engine": cls.name,
            "model_inventory_digest": identity["model_inventory_digest"],
            "request": identity["request"],
            "output": identity["output"],
            "runtime": legacy_runtime,
            "packages": packages,
        }

    def _verify(self, request: MusicRequest) -> tuple[MusicRequest, Audio | None, Audio | None]:
        return _check_request(request, self.loaded.name, self.takes_melody, self.window_s)

    # -- generation ------------------------------------------------------------------------
    def generate(
        self, request: MusicRequest, progress: Progress | None = None, cancel: Cancel | None = None
    ) -> MusicResult:
        """Generate music; returns float32 audio ``[batch, channels, samples]``.

        Args:
            request: the :class:`MusicRequest`.
            progress: ``progress(done, total)`` after every decoding step; an exception it
                raises stops the generation.
            cancel: a ``threading.Event`` (or a function) that, once set, stops the generation
                at the next step with :class:`harmonia.errors.Cancelled`.
        """
        with TORCH_LOCK:
            return self._generate(request, progress, cancel)

    def _generate(
        self, request: MusicRequest, progress: Progress | None, cancel: Cancel | None
    ) -> MusicResult:
        # 1. Check inputs and fix the seed.
        request, melody, continuation = self._verify(request)
        batch = len(request.prompts)
        stride = round((request.extend_stride_s or DEFAULT_STRIDE_SHARE * self.window_s) * self.frame_rate)
        stride = min(max(stride, 1), self.window_frames - 1)

        with torch.inference_mode(), pinned_threads(self.loaded.threads), Timer() as timer:
            # 2. Conditioning: text tokens, continuation tokens, melody samples.
            text = self.tokenizer(list(request.prompts), padding=True, return_tensors="pt").to(self.device)
            codes = torch.zeros((batch, self.num_codebooks, 0), dtype=torch.long, device=self.device)
            if continuation is not None:
                codes = self._encode(conform(continuation, self.sample_rate, self.channels)).repeat(
                    batch, 1, 1
                )
            melody_wave = conform(melody, self.sample_rate, 1)[0] if melody is not None else None

            # 3. Plan the windows: (first frame of context, new frames).
            total = math.ceil(request.duration_s * self.frame_rate - 1e-9)
            plan = _plan(total, codes.shape[-1], self.window_frames, stride)
            steps_total = sum(new + self.max_delay for _, new in plan)
            step = Steps(steps_total, progress, cancel)  # the decoding loops call step() per step

            # 4. Decode window by window on the request's own random stream.
            audio = None
            with seeded(request.seed, self.device):
                for start, new in plan:
                    chroma = None
                    if melody_wave is not None:
                        chroma = self._chroma(melody_wave, start / self.frame_rate).repeat(batch, 1, 1)
                    new_codes, audio = self._window(text, codes[:, :, start:], new, chroma, request, step)
                    codes = torch.cat([codes, new_codes], dim=-1)

            # 5. Decode all tokens at once (the continuation's too); a melody model's single
            # window comes decoded from transformers' generate(), which always decodes.
            if audio is None or len(plan) > 1:
                audio = self._decode(codes)
            samples = round(request.duration_s * self.sample_rate)
            audio = audio[..., :samples].float().cpu().numpy()

        return MusicResult(
            audio=np.ascontiguousarray(audio, dtype=np.float32),
            sample_rate=self.sample_rate,
            request=request,
            melody=melody,
            continuation=continuation,
            steps=steps_total,
            generate_s=timer.seconds,
            window_s=self.window_s,
            stride_s=stride / self.frame_rate if len(plan) > 1 else None,
            windows=len(plan),
            codes=codes.cpu(),
        )

    def _window(
        self, text, context: torch.Tensor, new: int, chroma, request: MusicRequest, step
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``new`` frames after ``context`` ([batch, codebooks, frames]): ``[batch, codebooks, new]``,
        and the audio of context and new frames where generate() decoded them (melody models), else None."""
        batch, codebooks, known = context.shape
        steps = new + self.max_delay
        if self.takes_melody:  # a conditioning prefix: transformers' generate
            watch = _StepWatch(step)
            kwargs = dict(
                **text,
                do_sample=True,
                temperature=request.temperature,
                top_k=request.top_k,
                top_p=request.top_p,
                guidance_scale=request.guidance_scale,
                max_new_tokens=steps,
                stopping_criteria=StoppingCriteriaList([watch]),
            )
            if known:
                kwargs["decoder_input_ids"] = context.reshape(batch * codebooks, known)
            if chroma is not None:  # a melody model may also run on text alone
                kwargs["input_features"] = chroma.to(self.device, self.model.dtype)
            audio = self.model.generate(**kwargs)
            sequence = watch.sequence
        else:
            audio = None
            sampling = Sampling(request.temperature, request.top_k, request.top_p, request.guidance_scale)
            sequence = sample_window(
                self.model,
                self._step,
                text["input_ids"],
                text["attention_mask"],
                context.reshape(batch * codebooks, known) if known else None,
                steps,
                sampling,
                step,
            )
        # The tokens follow MusicGen's delay pattern: codebook k's frame t sits at
        # position 1 + t + delay(k) of the sequence (position 0 is the start token).
        sequence = sequence.reshape(batch, codebooks, -1)
        delays = torch.arange(codebooks, device=self.device) // self.channels
        positions = (
            1 + known + torch.arange(new, device=self.device)[None, :] + delays[:, None]
        )  # [codebooks, new]
        return torch.gather(sequence, 2, positions[None].expand(batch, -1, -1)), audio

    def _encode(self, samples: np.ndarray) -> torch.Tensor:
        """EnCodec tokens ``[1, codebooks, frames]`` of ``[channels, samples]`` audio (stereo: interleaved)."""
        wave = torch.from_numpy(samples)[None].to(self.device, self.model.dtype)
        encoder = self.model.audio_encoder
        if self.channels == 1:
            return encoder.encode(wave[:, :1]).audio_codes[0]
        left = encoder.encode(wave[:, :1]).audio_codes[0]
        right = encoder.encode(wave[:, 1:2]).audio_codes[0]
        return torch.stack([left, right], dim=2).reshape(1, -1, left.shape[-1])

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Audio ``[batch, channels, samples]`` of tokens ``[batch, codebooks, frames]``."""
        decode = self.model.audio_encoder.decode
        scales = [None] * codes.shape[0]
        if self.channels == 1:
            return decode(codes[None], scales).audio_values
        left = decode(codes[None, :, ::2].contiguous(), scales).audio_values
        right = decode(codes[None, :, 1::2].contiguous(), scales).audio_values
        return torch.cat([left, right], dim=1)

    def _chroma(self, wave: np.ndarray, offset_s: float) -> torch.Tensor:
        """One-hot chroma ``[1, frames, 12]`` of the melody from ``offset_s``, looped to the chunk length."""
        from transformers.audio_utils import chroma_filter_bank

        cfg = self._chroma_settings
        n_fft, hop, rate = cfg["n_fft"], cfg["hop_length"], cfg["sampling_rate"]
        if self._chroma_filters is None:
            bank = chroma_filter_bank(
                num_frequency_bins=n_fft, num_chroma=cfg["num_chroma"], sampling_rate=rate, tuning=0
            )
            self._chroma_filters = torch.from_numpy(bank).float()
        length = min(cfg["chunk_length"] * rate, max(len(wave), 1))
        positions = (round(offset_s * rate) + np.arange(length)) % len(wave)
        segment = torch.from_numpy(np.ascontiguousarray(wave[positions], dtype=np.float32))
        if segment.shape[-1] < n_fft:
            pad = n_fft - segment.shape[-1]
            segment = torch.nn.functional.pad(segment, (pad // 2, pad - pad // 2))
        window = torch.hann_window(n_fft)
        spec = torch.stft(
            segment, n_fft, hop, n_fft, window, center=True, pad_mode="reflect", return_complex=True
        )
        power = spec.abs().pow(2) / window.pow(2).sum()  # torchaudio's Spectrogram(normalized=True, power=2)
        raw = self._chroma_filters @ power  # [chroma, frames]
        norm = raw / raw.abs().amax(dim=0, keepdim=True).clamp(min=1e-6)
        one_hot = torch.zeros_like(norm).scatter_(0, norm.argmax(dim=0, keepdim=True), 1.0)
        return one_hot.T[None]


def _config_facts(snapshot: Path) -> tuple[dict, int, int]:
    """config.json, the codec's frame rate and the decoder's window in frames."""
    config = json.loads((snapshot / "config.json").read_text(encoding="utf-8"))
    decoder, codec = config.get("decoder") or {}, config.get("audio_encoder") or {}
    try:
        hop = math.prod(codec.get("upsampling_ratios") or [1])
        frame_rate = math.ceil(codec["sampling_rate"] / hop)
        frames = min(
            round(TRAINED_WINDOW_S * frame_rate),
            decoder["max_position_embeddings"] - decoder["num_codebooks"],
        )
    except (KeyError, TypeError, ZeroDivisionError):
        raise RequestError(
            f"{snapshot / 'config.json'} is not a MusicGen config (no decoder/audio_encoder sizes). "
            "Pick a MusicGen model."
        ) from None
    return config, frame_rate, frames


DECODE_BYTES_PER_FILTER = 16  # EnCodec decoding: ~4 live float32 tensors of num_filters channels per sample


def _bytes_per_take(config: dict, request: MusicRequest, window_frames: int, frame_rate: int) -> int:
    """A conservative estimate of one take's peak memory: the decoder's keys and values over a window
    (twice with guidance) and EnCodec's decoding of the whole clip at once."""
    decoder, codec = config["decoder"], config["audio_encoder"]
    rows = 2 if request.guidance_scale > 1 else 1
    frames = min(math.ceil(request.duration_s * frame_rate), window_frames) + decoder["num_codebooks"]
    kv = 2 * decoder["num_hidden_layers"] * rows * frames * decoder["hidden_size"] * 4
    samples = math.ceil(request.duration_s * codec["sampling_rate"]) * decoder.get("audio_channels", 1)
    return kv + samples * codec.get("num_filters", 32) * DECODE_BYTES_PER_FILTER


def used_span(clip: Audio, seconds: float) -> Audio:
    """The first ``seconds`` of a clip (the clip itself when it is no longer).

    A melody's chroma is read window by window from each window's start for at most the
    feature extractor's chunk, so nothing past ``duration + chunk`` is ever read; the extra
    second keeps the resampler's edge away from what is read (the same bytes, tested).
    """
    keep = math.ceil(seconds * clip.sample_rate)
    if clip.samples.shape[1] <= keep:
        return clip
    return from_array(clip.samples[:, :keep], clip.sample_rate, "melody")


def _check_request(
    r: MusicRequest, name: str, takes_melody: bool, window_s: float
) -> tuple[MusicRequest, Audio | None, Audio | None]:
    """Check every parameter of a request for model ``name``; return it with its seed, and the inputs read."""
    if not isinstance(r.prompts, tuple) or not r.prompts:
        raise RequestError("prompts must be a non-empty list of strings: give at least one prompt.")
    for i, prompt in enumerate(r.prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise RequestError(f"prompts[{i}] is empty: describe the music in a few words.")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise RequestError(f"prompts[{i}] has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}.")
    check_limits(r)
    check_decoder(r, "musicgen")
    if r.extend_stride_s is not None:  # the model's window bounds it too
        Limit(0, window_s, "seconds", low_open=True, high_open=True).check(
            "extend_stride_s", r.extend_stride_s
        )
    seed = choose_seed() if r.seed is None else check_seed(r.seed)

    melody = None
    if r.melody is not None:
        if not takes_melody:
            raise RequestError(
                f"melody needs a MusicGen-Melody model; '{name}' is text-only MusicGen. "
                "Pick a melody model (e.g. musicgen-melody) or leave melody out."
            )
        melody = read_audio(r.melody, "melody")
        if is_silent(melody.samples):
            raise AudioError(
                f"melody: {melody.source or 'the array'} is silent (peak below -60 dBFS); a melody needs audible notes."
            )
    continuation = None
    if r.continuation is not None:
        continuation = read_audio(r.continuation, "continuation")
        if continuation.duration_s >= r.duration_s:
            raise RequestError(
                f"continuation is {continuation.duration_s:.2f} s long but duration_s is {r.duration_s:g}: "
                "duration_s is the length of the whole result, continuation included. Ask for more."
            )
        if continuation.duration_s >= window_s:
            raise RequestError(
                f"continuation must be shorter than the model's {window_s:g} s window, got "
                f"{continuation.duration_s:.2f} s. Trim it."
            )
    return replace(r, seed=seed), melody, continuation


def _plan(total: int, prompt: int, window: int, stride: int) -> list[tuple[int, int]]:
    """Windows as (first frame of context, new frames): fill the first window, then extend by ``stride``."""
    first = min(total, window) - prompt
    plan, done = [(0, first)], prompt + first
    while done < total:
        new = min(stride, total - done)
        plan.append((done - (window - stride), new))
        done += new
    return plan
