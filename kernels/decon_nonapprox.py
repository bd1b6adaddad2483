"""Fused steps of the query-independent (non-approximate) variant.

`native`: linear time — a running softmax over keys is a prefix sum, `o_i = Σ_{j≤i} e^{s_j−m} v_j /
Σ_{j≤i} e^{s_j−m}` with `m` the row-wide max, accumulated in fp64 so early prefixes never underflow.
`flex`: FlexAttention whose `score_mod` ignores `q·k` and returns the captured `s[b, h, kv]` (+ causal
block mask), the card's fused form.
"""

from __future__ import annotations

import torch

from attnbench.impls.decon_nonapprox import SPEC, key_scores
from attnbench.ops import flex_can_run
from attnbench.registry import register_backend
from attnbench.spec import Backend


@register_backend(SPEC, Backend.NATIVE)
def decon_nonapprox_native(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False
                           ) -> torch.Tensor:
    """`[B, H, N, D]` → `[B, H, N, D]` in O(N·D)."""
    s = key_scores(q, k)
    g = q.shape[1] // v.shape[1]
    v = v.repeat_interleave(g, dim=1) if g > 1 else v
    if not causal:
        o = torch.softmax(s, -1)[..., None, :] @ v.to(s.dtype)  # one row for every query
        return o.expand(-1, -1, q.shape[-2], -1).to(q.dtype)
    e = torch.exp((s - s.amax(-1, keepdim=True)).double())  # [B, H, N]
    num = (e[..., None] * v.double()).cumsum(-2)
    return (num / e.cumsum(-1)[..., None]).to(q.dtype)


@register_backend(SPEC, Backend.FLEX, can_run=flex_can_run)
def decon_nonapprox_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False
                         ) -> torch.Tensor:
    """FlexAttention with `score_mod = s[b, h, kv]` (the dot product is discarded)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    s = key_scores(q, k).to(q.dtype)
    n = q.shape[-2]

    def score_mod(score, b, h, q_idx, kv_idx):
        return s[b, h, kv_idx]

    block_mask = None
    if causal:
        block_mask = create_block_mask(lambda b, h, qi, kv: kv <= qi, None, None, n, n, device=q.device)
    return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask,
                          enable_gqa=q.shape[1] != k.shape[1])
