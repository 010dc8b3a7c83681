"""``unbind``, ``LowerTriangularMask`` and ``memory_efficient_attention`` on torch's SDPA.

xformers lays attention out as ``[batch, time, heads, dim]``; torch's
``scaled_dot_product_attention`` wants ``[batch, heads, time, dim]``. A LowerTriangularMask is
causal attention aligned at the top left (query i sees keys 0..i), as SDPA's ``is_causal``; a
tensor bias is added to the scores, as SDPA's float ``attn_mask``.
"""

import torch
import torch.nn.functional as F


def unbind(x: torch.Tensor, dim: int):
    return torch.unbind(x, dim=dim)


class LowerTriangularMask:
    """Causal attention (xformers' marker class; it carries no tensor)."""


def memory_efficient_attention(query, key, value, attn_bias=None, p: float = 0.0, scale=None):
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    causal = isinstance(attn_bias, LowerTriangularMask)
    mask = None if causal or attn_bias is None else attn_bias.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal, scale=scale)
    return out.transpose(1, 2)
