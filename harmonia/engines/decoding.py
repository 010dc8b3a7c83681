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
- modules are called through ``forward`` (no hooks, no ``__call__`` machinery), masks and
  the guidance rows are prepared once;
- the logits of the last position only are taken; sampling is transformers' own logits
  processors (guidance, temperature, top-k, top-p) and ``torch.multinomial``.

MusicGen-Melody (a conditioning prefix instead of cross-attention) still goes through
``generate``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


class _Cache:
    """Self-attention keys and values of every layer in buffers sized for the whole window.

    Attention itself runs in ``dtype`` (float32 for a bfloat16 decoder on CPU, where bfloat16
    attention is 2-8x slower than float32's, measured), so keys and values are kept in it.
    """

    def __init__(self, layers: int, rows: int, heads: int, capacity: int, head_dim: int, dtype, device):
        shape = (rows, heads, capacity, head_dim)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.length = 0

    def update(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + keys.shape[2]
        self.keys[layer][:, :, self.length : end] = keys
        self.values[layer][:, :, self.length : end] = values
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


def sample_window(
    model,
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

    # 3. Buffers for the window: the sequence, the keys and values.
    sequence = torch.empty((rows, total), dtype=torch.long, device=ids.device)
    sequence[:, : ids.shape[-1]] = ids
    filled = ids.shape[-1]
    attention = decoder.layers[0].self_attn
    heads, head_dim = attention.num_heads, attention.head_dim
    factor = 2 if guided else 1
    attend_dtype = torch.float32 if dtype == torch.bfloat16 and encoded.device.type == "cpu" else dtype
    cache = _Cache(
        len(decoder.layers), rows // codebooks * factor, heads, total, head_dim, attend_dtype, encoded.device
    )
    cross = []
    for layer in decoder.layers:
        a = layer.encoder_attn
        shape = (encoded.shape[0], encoded.shape[1], -1, head_dim)
        cross.append(
            (
                a.k_proj.forward(encoded).view(shape).transpose(1, 2).to(attend_dtype),
                a.v_proj.forward(encoded).view(shape).transpose(1, 2).to(attend_dtype),
            )
        )
    processors = sampling.processors()
    masks: dict[int, torch.Tensor | None] = {}

    # 4. Prefill with what is known, then one position per step.
    for _ in range(steps):
        known = filled if cache.length == 0 else 1
        window = sequence[:, filled - known : filled]
        window = torch.where(
            pattern[:, filled - known : filled] == -1, window, pattern[:, filled - known : filled]
        )
        if guided:
            window = window.repeat((2, 1))
        logits = _forward(decoder, decoder_lm.lm_heads, window, encoded, attention_mask, cache, cross, masks)
        scores = processors(sequence[:, :filled], logits)
        probs = F.softmax(scores, dim=-1)
        sequence[:, filled] = torch.multinomial(probs, num_samples=1).squeeze(1)
        filled += 1
        if on_step is not None:
            on_step()
    return torch.where(pattern == -1, sequence, pattern)


def _forward(decoder, heads, window, encoded, text_mask, cache: _Cache, cross, masks) -> torch.Tensor:
    """Logits ``[rows, vocab]`` (float32) of the last position of ``window`` ``[rows, positions]``."""
    codebooks = decoder.num_codebooks
    tokens = window.reshape(-1, codebooks, window.shape[-1])
    batch, _, positions = tokens.shape
    embeds = sum(decoder.embed_tokens[k].forward(tokens[:, k]) for k in range(codebooks))
    where = torch.arange(positions, device=window.device) + cache.length
    hidden = embeds + decoder.embed_positions.weights.index_select(0, where).to(embeds.device)
    if positions not in masks:
        masks[positions] = create_bidirectional_mask(
            config=decoder.config,
            inputs_embeds=embeds,
            attention_mask=text_mask,
            encoder_hidden_states=encoded,
        )
    cross_mask = masks[positions]

    for index, layer in enumerate(decoder.layers):
        # self-attention over the cache
        residual = hidden
        hidden = layer.self_attn_layer_norm.forward(hidden)
        hidden = residual + _attend(layer.self_attn, hidden, None, positions > 1, cache, index)
        # cross-attention over the prompt
        residual = hidden
        hidden = layer.encoder_attn_layer_norm.forward(hidden)
        hidden = residual + _attend(layer.encoder_attn, hidden, cross_mask, False, cross, index)
        # feed-forward
        residual = hidden
        hidden = layer.final_layer_norm.forward(hidden)
        hidden = layer.fc2.forward(layer.activation_fn(layer.fc1.forward(hidden)))
        hidden = residual + hidden
    cache.length += positions

    hidden = decoder.layer_norm.forward(hidden)
    logits = torch.stack(
        [head.forward(hidden) for head in heads], dim=1
    )  # [batch, codebooks, positions, vocab]
    logits = logits.reshape(batch * codebooks, positions, -1)
    return logits[:, -1].to(copy=True, dtype=torch.float32)


def _attend(attention, hidden, mask, causal: bool, keys_values: _Cache | list, index: int) -> torch.Tensor:
    """MusicgenAttention on transformers' sdpa path, over the cache (self) or the prompt's keys (cross)."""
    shape = (*hidden.shape[:-1], -1, attention.head_dim)
    query = attention.q_proj.forward(hidden).view(shape).transpose(1, 2)
    if isinstance(keys_values, _Cache):
        keys = attention.k_proj.forward(hidden).view(shape).transpose(1, 2)
        values = attention.v_proj.forward(hidden).view(shape).transpose(1, 2)
        keys, values = keys_values.update(index, keys, values)
    else:
        keys, values = keys_values[index]
    out = F.scaled_dot_product_attention(
        query.to(keys.dtype),
        keys,
        values,
        attn_mask=mask,
        dropout_p=0.0,
        scale=attention.scaling,
        is_causal=causal,
    )
    out = out.transpose(1, 2).contiguous().reshape(*hidden.shape[:-1], -1).contiguous().to(hidden.dtype)
    return attention.out_proj.forward(out)
