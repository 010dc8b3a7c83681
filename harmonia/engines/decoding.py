"""MusicGen's decoding loop, Harmonia's own: transformers' arithmetic without generate()'s costs.

transformers' ``generate`` spends a large share of each step outside the matrix products:
its cache grows by ``torch.cat`` (every step copies every layer's keys and values, and the
fresh allocations fault in new pages), each of the ~300 module calls goes through
``nn.Module.__call__``, masks are rebuilt, and the generic loop adds its own bookkeeping.
This loop does the same computation on the same modules of one MusicGen (text-to-music)
model, in the same order and with the same torch operations, so that in float32 it samples
the same tokens from the same random stream as ``generate`` (tests/engines check it on
every run). What it changes:

- keys and values go into buffers allocated once for the whole window; attention reads
  views of them (no copy, no allocation per step);
- the decoder's layers run as one TorchScript module over the model's own modules
  (:class:`DecoderStep`): the same operations without Python's cost per call; masks, the
  prompt's cross-attention keys and the guidance rows are prepared once;
- with Harmonia's attention and its int8 or int4 products (the own-kernel paths of ``int8``
  and ``int4``), a single-position step's layers are one call,
  ``torch.ops.harmonia.decode_layers``: the same functions in the same order as the
  TorchScript layers, so the same bits, without the interpreter between them
  (:func:`fused_parameters`);
- the logits of the last position only are taken; sampling is transformers' logits
  processors (guidance, temperature, top-k, top-p) and softmax as one TorchScript function of
  the same bits (:meth:`Sampling.probabilities`), then ``torch.multinomial``; the step's
  inputs (delay pattern, embeddings, positions) are one TorchScript function too.

Attention is torch's SDPA, as transformers calls it, unless the engine chose Harmonia's
kernel (the ``attention`` paths "own", "own-bf16" and "own-int8", never in ``exact``): then a
single-position step's attention runs ``torch.ops.harmonia.decode_attention``. "own" keeps
the cache in the decoder's dtype (bfloat16 in bf16, exactly what its projections return;
float32 otherwise); "own-bf16" keeps a float32 decoder's keys and values in bfloat16, rounded
as they are stored (int8 and int4, whose weights and inputs are rounded far more coarsely
already): half the bytes a step reads from a long cache. "own-int8" keeps them as int8 codes
with a float32 scale per (row, head, position) (``torch.ops.harmonia.store_int8``; the keys in
blocks of 16 positions, so that a step's scores are integer dot products; the prompt's keys and
values, read by cross-attention, in bfloat16 as "own-bf16"): 68 bytes where bfloat16 takes 128
for musicgen-small's heads of 64.

MusicGen-Melody (a conditioning prefix instead of cross-attention) still goes through
``generate``.
"""

from __future__ import annotations

import copy
import functools
import logging
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from transformers import (
    ClassifierFreeGuidanceLogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.masking_utils import create_bidirectional_mask

from harmonia.errors import RequestError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 1.0
    guidance_scale: float = 3.0

    def processors(self) -> LogitsProcessorList:
        """transformers' processors, in the order its generate() applies them for MusicGen."""
        chain = LogitsProcessorList()
        if self.guidance_scale > 1:
            chain.append(ClassifierFreeGuidanceLogitsProcessor(self.guidance_scale))
        if self.temperature != 1.0:
            chain.append(TemperatureLogitsWarper(self.temperature))
        if self.top_k:
            chain.append(TopKLogitsWarper(top_k=self.top_k, min_tokens_to_keep=1))
        if self.top_p < 1.0:
            chain.append(TopPLogitsWarper(top_p=self.top_p, min_tokens_to_keep=1))
        return chain

    def probabilities(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The sampling distribution of a step's logits: :meth:`processors`, then softmax.

        transformers' processors and ``F.softmax`` as the same torch operations in the same order
        (but for top-k's threshold, taken by ``kthvalue`` on the CPU: the same value), so the
        same bits (tests compare them), compiled by TorchScript: a step then pays
        one call instead of the processors' Python (``LogitsProcessorList`` reads every
        processor's signature on every call). The processors check their settings as they
        are built, so the chain is built here once for those checks and their messages.
        """
        self.processors()
        guidance, temperature = float(self.guidance_scale), float(self.temperature)
        top_k, top_p = int(self.top_k or 0), float(self.top_p)  # None: off, as processors() has it
        distribution = _compiled(_probabilities_eager)
        return lambda logits: distribution(logits, guidance, temperature, top_k, top_p)


def _probabilities_eager(
    logits: torch.Tensor, guidance_scale: float, temperature: float, top_k: int, top_p: float
) -> torch.Tensor:
    """transformers' ClassifierFreeGuidance, Temperature, TopK and TopP processors (with
    ``min_tokens_to_keep=1``), applied as :meth:`Sampling.processors` chains them, then softmax:
    their torch operations, but for top-k's threshold on the CPU (the same value, see below)."""
    scores = logits
    if guidance_scale > 1:
        unguided = scores.shape[0] // 2
        halves = scores.split(unguided, dim=0)
        scores = halves[1] + (halves[0] - halves[1]) * guidance_scale
    if temperature != 1.0:
        scores = scores / temperature
    if top_k != 0:
        # TopK's threshold, torch.topk(scores, kept)[0][..., -1, None], is the kept-th largest
        # score: one of the scores, the same value whatever the ties. On the CPU kthvalue selects
        # it without sorting the kept (3x faster here on 2048 scores; tests compare the two on
        # ties); other devices keep transformers' topk (not every backend has kthvalue).
        kept = min(max(top_k, 1), scores.size(-1))
        if scores.device.type == "cpu":
            threshold = torch.kthvalue(scores, scores.size(-1) - kept + 1, dim=-1, keepdim=True)[0]
        else:
            threshold = torch.topk(scores, kept)[0][..., -1, None]
        remove = scores < threshold
        scores = scores.masked_fill(remove, -float("inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(scores, descending=False)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= (1 - top_p)
        drop[..., -1:] = False
        scores = scores.masked_fill(drop.scatter(1, order, drop), -float("inf"))
    return F.softmax(scores, dim=-1)


@functools.cache
def _compiled(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``function`` compiled by TorchScript once per process (as it is, eagerly, where it cannot be)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.script(function)
    except Exception as error:
        name = function.__name__.strip("_").removesuffix("_eager")
        log.warning(
            "the decoding loop's %s run eagerly: the same results, slower (TorchScript failed: %s)",
            name,
            error,
        )
        return function


def sample_window(
    model,
    step: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    context: torch.Tensor | None,
    steps: int,
    sampling: Sampling,
    on_step: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Sample ``steps`` decoding steps of a MusicGen model after ``context`` tokens.

    Args:
        model: a ``MusicgenForConditionalGeneration`` in eval mode.
        step: the model's :func:`decoder_step` (a wrapper of it must carry its ``cache``: the
            dtype the window's keys and values are kept in).
        input_ids, attention_mask: the tokenised prompts, ``[batch, text_tokens]``.
        context: known tokens ``[batch * codebooks, frames]`` (no start token), or None.
        steps: decoding steps (new frames plus the codebook delay).
        sampling: temperature, top-k, top-p and guidance.
        on_step: called after every step; an exception it raises stops the loop.

    Returns:
        The whole sequence ``[batch * codebooks, 1 + frames + steps]`` in MusicGen's delay
        pattern, start token first: what ``generate`` builds internally.
    """
    decoder_lm = model.decoder  # MusicgenForCausalLM
    decoder = decoder_lm.model.decoder  # MusicgenDecoder
    config = decoder.config
    codebooks = config.num_codebooks
    start = model.generation_config.decoder_start_token_id
    guided = sampling.guidance_scale > 1
    dtype = decoder.layer_norm.weight.dtype

    # 1. The text encoder once; guidance adds a "null" prompt (zeros, fully masked) per row.
    encoded = model.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    if guided:
        encoded = torch.cat([encoded, torch.zeros_like(encoded)], dim=0)
        attention_mask = torch.cat([attention_mask, torch.zeros_like(attention_mask)], dim=0)
    if (
        model.text_encoder.config.hidden_size != config.hidden_size
        and config.cross_attention_hidden_size is None
    ):
        encoded = model.enc_to_dec_proj(encoded)
    encoded = (encoded * attention_mask[..., None]).to(dtype)

    # 2. The delay pattern of the whole window (transformers' own function).
    rows = input_ids.shape[0] * codebooks
    ids = torch.full((rows, 1), start, dtype=torch.long, device=input_ids.device)
    if context is not None and context.shape[-1]:
        ids = torch.cat([ids, context], dim=-1)
    total = ids.shape[-1] + steps
    ids, pattern = decoder_lm.build_delay_pattern_mask(ids, pad_token_id=start, max_length=total)

    # 3. Buffers for the window: the sequence, the keys and values; the prompt's keys and values.
    sequence = torch.empty((rows, total), dtype=torch.long, device=ids.device)
    sequence[:, : ids.shape[-1]] = ids
    filled = ids.shape[-1]
    head_dim = decoder.layers[0].self_attn.head_dim
    kept = getattr(torch, step.cache)
    heads = (rows // codebooks * (2 if guided else 1), decoder.layers[0].self_attn.num_heads)
    if kept == torch.int8:  # the layout harmonia.store_int8 writes
        from harmonia.kernels import int8_cache

        keys = [int8_cache(*heads, total, head_dim, keys=True, device=encoded.device) for _ in decoder.layers]
        values = [
            int8_cache(*heads, total, head_dim, keys=False, device=encoded.device) for _ in decoder.layers
        ]
        kept = torch.bfloat16  # the prompt's keys and values, as "own-bf16" keeps them
    else:
        keys = [
            torch.empty(*heads, total, head_dim, dtype=kept, device=encoded.device) for _ in decoder.layers
        ]
        values = [
            torch.empty(*heads, total, head_dim, dtype=kept, device=encoded.device) for _ in decoder.layers
        ]
    length = 0
    split = (encoded.shape[0], encoded.shape[1], -1, head_dim)
    cross_keys = [
        layer.encoder_attn.k_proj.forward(encoded).view(split).transpose(1, 2).to(kept)
        for layer in decoder.layers
    ]
    cross_values = [
        layer.encoder_attn.v_proj.forward(encoded).view(split).transpose(1, 2).to(kept)
        for layer in decoder.layers
    ]
    distribution = sampling.probabilities()
    inputs = _compiled(_inputs_eager)
    tables = [embedding.weight for embedding in decoder.embed_tokens]
    positions = decoder.embed_positions.weights
    masks: dict[int, torch.Tensor | None] = {}

    # 4. Prefill with what is known, then one position per step.
    with torch.jit.optimized_execution(False):  # the script runs as written: no fusion, no re-specialising
        for _ in range(steps):
            known = filled if length == 0 else 1
            hidden = inputs(sequence, pattern, filled, known, guided, tables, positions, length)
            if known not in masks:
                masks[known] = create_bidirectional_mask(
                    config=config,
                    inputs_embeds=hidden,
                    attention_mask=attention_mask,
                    encoder_hidden_states=encoded,
                )
            logits = step(hidden, keys, values, length, cross_keys, cross_values, masks[known])
            length += known
            sequence[:, filled] = torch.multinomial(distribution(logits), num_samples=1).squeeze(1)
            filled += 1
            if on_step is not None:
                on_step()
    return torch.where(pattern == -1, sequence, pattern)


def _inputs_eager(
    sequence: torch.Tensor,
    pattern: torch.Tensor,
    filled: int,
    known: int,
    guided: bool,
    tables: list[torch.Tensor],
    positions: torch.Tensor,
    start: int,
) -> torch.Tensor:
    """MusicgenDecoder's input for the ``known`` positions before ``filled``: the window's tokens
    with the delay pattern applied (doubled for guidance), the codebooks' token embeddings summed
    in order, plus the sinusoidal positions from ``start``. (transformers sums them with ``sum()``,
    from 0: 0 + e only turns -0.0 into 0.0, and the positions, added last, are never -0.0, so
    the result has the same bits without it.)"""
    window = sequence[:, filled - known : filled]
    window = torch.where(
        pattern[:, filled - known : filled] == -1, window, pattern[:, filled - known : filled]
    )
    if guided:
        window = window.repeat((2, 1))
    codebooks = len(tables)
    tokens = window.reshape(-1, codebooks, window.shape[-1])
    embeds = F.embedding(tokens[:, 0], tables[0])
    for k in range(1, codebooks):
        embeds = embeds + F.embedding(tokens[:, k], tables[k])
    where = torch.arange(tokens.shape[-1], device=window.device) + start
    return embeds + positions.index_select(0, where).to(embeds.device)


class _Layer(torch.nn.Module):
    """One MusicgenDecoderLayer on transformers' sdpa path, over the window's buffers (TorchScript-able)."""

    def __init__(self, layer, attend_dtype: torch.dtype):
        super().__init__()
        own, cross = layer.self_attn, layer.encoder_attn
        self.norm_self, self.norm_cross, self.norm_ff = (
            layer.self_attn_layer_norm,
            layer.encoder_attn_layer_norm,
            layer.final_layer_norm,
        )
        self.q, self.k, self.v, self.out = own.q_proj, own.k_proj, own.v_proj, own.out_proj
        self.cross_q, self.cross_out = cross.q_proj, cross.out_proj
        self.fc1, self.fc2 = layer.fc1, layer.fc2
        self.head_dim: int = own.head_dim
        self.scaling: float = float(own.scaling)
        self.attend_dtype = attend_dtype

    def forward(
        self,
        hidden: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        start: int,
        cross_keys: torch.Tensor,
        cross_values: torch.Tensor,
        cross_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        rows, positions = hidden.shape[0], hidden.shape[1]
        end = start + positions
        # self-attention: this window's keys and values go into the buffers, attention reads views
        normed = self.norm_self(hidden)
        query = self.q(normed).view(rows, positions, -1, self.head_dim).transpose(1, 2)
        self._store(keys, self.k(normed).view(rows, positions, -1, self.head_dim).transpose(1, 2), start)
        self._store(values, self.v(normed).view(rows, positions, -1, self.head_dim).transpose(1, 2), start)
        attended = self._attend(query.to(self.attend_dtype), keys, values, end, positions > 1, None)
        hidden = hidden + self.out(self._merge(attended, hidden.dtype))
        # cross-attention over the prompt's keys and values (computed once per window)
        normed = self.norm_cross(hidden)
        query = self.cross_q(normed).view(rows, positions, -1, self.head_dim).transpose(1, 2)
        attended = self._attend(
            query.to(self.attend_dtype), cross_keys, cross_values, cross_keys.shape[2], False, cross_mask
        )
        hidden = hidden + self.cross_out(self._merge(attended, hidden.dtype))
        # feed-forward (MusicGen's activation is gelu; the engine checks it at load)
        return hidden + self.fc2(F.gelu(self.fc1(self.norm_ff(hidden))))

    def _store(self, cache: torch.Tensor, window: torch.Tensor, start: int) -> None:
        """This window's keys or values into the cache, from position ``start`` (cast to its dtype)."""
        cache[:, :, start : start + window.shape[2]] = window

    def _cached(self, cache: torch.Tensor, end: int, dtype: torch.dtype) -> torch.Tensor:
        """The cache's first ``end`` positions in ``dtype`` (a no-op, no copy, where it is kept in it)."""
        return cache[:, :, :end].to(dtype)

    def _attend(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        end: int,
        causal: bool,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """``query`` against ``keys[:, :, :end]`` and ``values[:, :, :end]``: torch's SDPA (transformers' call)."""
        return self._sdpa(query, keys, values, end, causal, mask)

    def _sdpa(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        end: int,
        causal: bool,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """torch's SDPA as transformers calls it, on the cache in the query's dtype (a no-op,
        no copy, where the cache is kept in it: always, but for a bfloat16 or int8 cache on Harmonia's kernel)."""
        return F.scaled_dot_product_attention(
            query,
            self._cached(keys, end, query.dtype),
            self._cached(values, end, query.dtype),
            attn_mask=mask,
            dropout_p=0.0,
            is_causal=causal,
            scale=self.scaling,
        )

    def _merge(self, attended: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Heads back into the hidden size: ``[rows, heads, positions, dim]`` → ``[rows, positions, heads * dim]``."""
        rows, positions = attended.shape[0], attended.shape[2]
        return attended.transpose(1, 2).contiguous().reshape(rows, positions, -1).contiguous().to(dtype)


class _OwnAttentionLayer(_Layer):
    """A :class:`_Layer` whose single-position attention is Harmonia's kernel (the "own" and
    "own-bf16" attention paths, and through :class:`_Int8CacheLayer` "own-int8"): each (row,
    head) in one fixed order of operations, reading the cache as it is kept (float32, bfloat16
    or int8). Several positions (a prefill) still go through SDPA, in float32."""

    def _attend(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        end: int,
        causal: bool,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        if query.shape[2] == 1:
            return torch.ops.harmonia.decode_attention(query, keys, values, end, self.scaling, mask)
        return self._sdpa(query, keys, values, end, causal, mask)


class _Int8CacheLayer(_OwnAttentionLayer):
    """An :class:`_OwnAttentionLayer` whose window's keys and values are kept in int8 (the
    "own-int8" path): each position's ``head_dim`` values quantised by ``harmonia.store_int8`` to
    codes and a float32 scale (keys as uint8, in blocks of 16 positions; values as int8), read
    back as code x scale (for a prefill's SDPA by ``harmonia.int8_values``; a step's kernel also
    rounds the query to int8, so that its scores are integer dot products). The prompt's keys and
    values stay bfloat16."""

    def _store(self, cache: torch.Tensor, window: torch.Tensor, start: int) -> None:
        if cache.dtype == torch.int8 or cache.dtype == torch.uint8:
            torch.ops.harmonia.store_int8(cache, window, start)
        else:
            cache[:, :, start : start + window.shape[2]] = window

    def _cached(self, cache: torch.Tensor, end: int, dtype: torch.dtype) -> torch.Tensor:
        if cache.dtype != torch.int8 and cache.dtype != torch.uint8:
            return cache[:, :, :end].to(dtype)
        return torch.ops.harmonia.int8_values(cache, end, self.head_dim).to(dtype)


class DecoderStep(torch.nn.Module):
    """MusicGen's decoder layers, final norm and codebook heads for one window of positions.

    The same modules (shared, not copied) and the same torch operations in the same order as
    transformers' MusicgenDecoder on its sdpa path, written so that TorchScript can compile
    them: run as a script the ~700 operations of a step skip Python's per-call costs (int8
    steps about 1.4x faster on two cores, measured), and the logits are identical to the eager
    module's to the bit (tests/engines check it for every precision). With ``fused`` (what
    :func:`decoder_step` asks for), a single-position step's layers are one call,
    ``harmonia.decode_layers``, where :func:`fused_parameters` finds Harmonia's attention and
    int8 or int4 kernels in every layer: the same functions in the same order, the same bits.
    """

    # TorchScript compiles only the branch it takes ("fused": decode_layers, which needs the kernels)
    __constants__ = ("fused",)

    def __init__(self, model, attend_dtype: torch.dtype, attention: str = "sdpa", fused: bool = False):
        super().__init__()
        decoder = model.decoder.model.decoder
        activation = decoder.config.activation_function
        if activation != "gelu":
            raise RequestError(
                f"This MusicGen decoder uses the {activation!r} activation; Harmonia's decoding step "
                "runs MusicGen's gelu decoders. Use a snapshot whose decoder config has "
                "activation_function 'gelu' (every released MusicGen checkpoint does)."
            )
        if any(embedding.max_norm is not None for embedding in decoder.embed_tokens):
            raise RequestError(
                "This MusicGen decoder's token embeddings renormalise their rows (max_norm); Harmonia's "
                "decoding loop looks them up as they are stored, as every released MusicGen checkpoint's are."
            )
        if attention == "own-int8" and decoder.layer_norm.weight.dtype != torch.float32:
            raise RequestError(
                "attention own-int8 keeps a float32 decoder's keys and values in int8 (precision int8 or "
                f"int4); this decoder is {str(decoder.layer_norm.weight.dtype).removeprefix('torch.')}, "
                "and its kernel path is own. Set HARMONIA_ATTENTION to own or auto."
            )
        kind = {
            "sdpa": _Layer,
            "own": _OwnAttentionLayer,
            "own-bf16": _OwnAttentionLayer,
            "own-int8": _Int8CacheLayer,
        }[attention]
        self.layers = torch.nn.ModuleList([kind(layer, attend_dtype) for layer in decoder.layers])
        # the dtype the window's keys and values are kept in: the attention's (float32 for SDPA
        # on CPU); for Harmonia's kernel the decoder's own ("own": exactly what its projections
        # return), bfloat16 ("own-bf16": a float32 decoder's keys and values rounded as they are
        # stored) or int8 ("own-int8": codes and a scale per row)
        self.attention: str = attention
        own = attention == "own-bf16" or (
            attention == "own" and decoder.layer_norm.weight.dtype == torch.bfloat16
        )
        self.cache: str = (
            "int8"
            if attention == "own-int8"
            else "bfloat16"
            if own
            else str(attend_dtype).removeprefix("torch.")
        )
        self.norm = decoder.layer_norm
        # The heads without their hooks (a bfloat16 model's hooks cast logits for generate();
        # TorchScript cannot compile them, and the cast happens below): shallow copies, same weights.
        heads = []
        for head in model.decoder.lm_heads:
            head = copy.copy(head)
            head._forward_hooks = OrderedDict()
            heads.append(head)
        self.heads = torch.nn.ModuleList(heads)
        # a single-position step's layers as one call (harmonia.decode_layers) where Harmonia's
        # attention runs in float32 and fused_parameters finds its integer kernels in every layer
        own = issubclass(kind, _OwnAttentionLayer) and attend_dtype == torch.float32
        gathered = fused_parameters(self.layers) if fused and own else None
        self.fused = gathered is not None
        if gathered is not None:  # (read only by the branch TorchScript compiles where fused)
            self.parameters_fused, self.out_features = gathered.params, gathered.outs
            self.head_dim, self.scaling, self.eps = gathered.head_dim, gathered.scaling, gathered.eps

    def forward(
        self,
        hidden: torch.Tensor,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        start: int,
        cross_keys: list[torch.Tensor],
        cross_values: list[torch.Tensor],
        cross_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Logits ``[rows * codebooks, vocab]`` (float32) of the last of ``hidden``'s positions."""
        if self.fused and hidden.shape[1] == 1:
            hidden = torch.ops.harmonia.decode_layers(
                hidden, keys, values, start, cross_keys, cross_values, cross_mask,
                self.parameters_fused, self.out_features, self.head_dim, self.scaling, self.eps,
            )  # fmt: skip
        else:
            for index, layer in enumerate(self.layers):
                hidden = layer(
                    hidden,
                    keys[index],
                    values[index],
                    start,
                    cross_keys[index],
                    cross_values[index],
                    cross_mask,
                )
        hidden = self.norm(hidden)
        logits = torch.stack(
            [head(hidden) for head in self.heads], dim=1
        )  # [rows, codebooks, positions, vocab]
        logits = logits.reshape(hidden.shape[0] * logits.shape[1], hidden.shape[1], -1)
        return logits[:, -1].to(dtype=torch.float32, copy=True)


def decoder_step(model, attention: str = "sdpa", fused: bool = True) -> torch.nn.Module:
    """The model's :class:`DecoderStep`, compiled by TorchScript (eager where this torch cannot script it).

    ``attention``: "sdpa" (torch's, as transformers calls it), "own" (Harmonia's kernel for
    single-position steps, over a cache in the decoder's dtype), "own-bf16" (the kernel over
    a bfloat16 cache) or "own-int8" (over an int8 cache, a float32 decoder's only); the caller
    checks that the kernel can run here. ``fused``: a single-position step's layers as one
    call where :func:`fused_parameters` allows it (the same bits; False: layer by layer).

    TorchScript is deprecated in favour of ``torch.compile``, which cannot trace torch.ao's
    packed int8 weights (a graph break at every Linear) and compiles for minutes on two cores.
    Both forms compute the same bits; the eager form is only slower.
    """
    step = DecoderStep(model, attend_dtype(model.decoder.model.decoder.layer_norm.weight), attention, fused)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "torch.jit.script is deprecated"
            return torch.jit.script(step)
    except Exception as error:  # a torch without TorchScript: the same arithmetic, eagerly
        log.warning("decoding runs eagerly: the same results, slower (TorchScript failed: %s)", error)
        return step


class Fused(NamedTuple):
    """What ``torch.ops.harmonia.decode_layers`` takes besides a step's inputs (:func:`fused_parameters`)."""

    params: list[torch.Tensor]  # each layer's 3 norms' weights and biases, then 8 x 4 product tensors
    outs: list[int]  # each product's out_features
    head_dim: int
    scaling: float
    eps: float


def fused_parameters(layers) -> Fused | None:
    """What ``torch.ops.harmonia.decode_layers`` takes to run these layers (each a :class:`_Layer`, as
    :class:`DecoderStep` builds them: the modules the TorchScript layer runs) for one position:
    each layer's three norms' weights and biases (self-attention's, cross-attention's, the
    feed-forward's), then for each of its eight products (q, k, v, out, cross q, cross out, fc1,
    fc2) its kernel's tensors (packed weights, scales, column sums or empty, bias or empty), every
    product's out_features, and the head width, attention's scale and the norms' epsilon, which
    every layer shares. The layers' own tensors, not copies.

    None where the call cannot run these layers as the TorchScript layer with Harmonia's
    attention would (:class:`DecoderStep` asks only where that attention runs): a product other
    than Harmonia's int8 or int4 kernel (``exact``'s and ``bf16``'s float products, torch.ao's
    int8, the kernels' torch forms); norms not float32, without weight or bias, or of another
    width or epsilon; another head width or scale.
    """
    from harmonia.engines.musicgen import _Int4Linear, _RowwiseInt8Linear  # (musicgen imports this module)

    first = layers[0]
    eps, width = first.norm_self.eps, first.norm_self.normalized_shape
    empty = torch.empty(0)
    params: list[torch.Tensor] = []
    outs: list[int] = []
    for layer in layers:
        if layer.head_dim != first.head_dim or layer.scaling != first.scaling:
            return None
        norms = (layer.norm_self, layer.norm_cross, layer.norm_ff)
        if any(
            n.weight is None
            or n.bias is None
            or n.weight.dtype != torch.float32
            or n.eps != eps
            or n.normalized_shape != width
            for n in norms
        ):
            return None
        params += [t for n in norms for t in (n.weight, n.bias)]
        for module in (
            layer.q,
            layer.k,
            layer.v,
            layer.out,
            layer.cross_q,
            layer.cross_out,
            layer.fc1,
            layer.fc2,
        ):
            if type(module) is _RowwiseInt8Linear:
                tensors = [module.packed, module.scales, module.colsum, module.bias]
            elif type(module) is _Int4Linear:
                tensors = [module.packed, module.scales, None, module.bias]
            else:
                return None
            params += [t if t is not None else empty for t in tensors]
            outs.append(int(module.out_features))
    return Fused(params, outs, int(first.head_dim), float(first.scaling), float(eps))


def attend_dtype(weight: torch.Tensor) -> torch.dtype:
    """Attention runs in float32 for a bfloat16 decoder on CPU (bfloat16 SDPA is 2-8x slower there, measured)."""
    return torch.float32 if weight.dtype == torch.bfloat16 and weight.device.type == "cpu" else weight.dtype
