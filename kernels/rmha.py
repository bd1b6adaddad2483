"""Fused relative-attention steps (RMHA, shared with RCMHA).

`u` is folded into q (`(q+u)·k` is SDPA on `q+u`); the positional logits `q·P_{i−j} + b_{i−j}` are
computed once per offset (`[B, H, N, 2N−1]`) and laid out as `[B, H, N, N]` by a strided skew view
(no index tensor), then passed to SDPA as a float bias, or read inside a FlexAttention `score_mod`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnbench.impls.rmha import SPEC
from attnbench.ops import flex_can_run
from attnbench.registry import register_backend
from attnbench.spec import Backend


def offset_logits(q: torch.Tensor, p_win: torch.Tensor, b_win: torch.Tensor) -> torch.Tensor:
    """`[B, H, N, 2N−1]` positional logits, column `c` = offset `(N−1) − c` (reversed order)."""
    return (torch.einsum("bhid,rhd->bhir", q, p_win.flip(0).to(q.dtype))
            + b_win.flip(0).to(q.dtype).T[None, :, None, :])


def skew(bd: torch.Tensor) -> torch.Tensor:
    """`[B, H, N, 2N−1]` (reversed offsets) → `[B, H, N, N]` view with `out[i, j] = bd[i, N−1+j−i]`."""
    b, h, n, m = bd.shape
    bd = bd.contiguous()
    s0, s1, s2, _ = bd.stride()
    return bd.as_strided((b, h, n, n), (s0, s1, s2 - 1, 1), bd.storage_offset() + n - 1)


def rel_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, u: torch.Tensor, p_win: torch.Tensor,
             b_win: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
    """SDPA on `q+u` with the skewed positional logits (and the causal mask) as a float bias."""
    n, scale = q.shape[-2], q.shape[-1] ** -0.5
    bias = skew(offset_logits(q, p_win, b_win)) * scale
    if causal:
        keep = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        bias = bias.masked_fill(~keep, float("-inf"))
    return F.scaled_dot_product_attention(q + u[:, None, :].to(q.dtype), k, v, attn_mask=bias)


def rel_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, u: torch.Tensor, p_win: torch.Tensor,
             b_win: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
    """FlexAttention on `q+u`; `score_mod` adds `bd[b, h, i, N−1+j−i]·scale` (+ causal block mask)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    n, scale = q.shape[-2], q.shape[-1] ** -0.5
    bd = offset_logits(q, p_win, b_win) * scale

    def score_mod(score, b, h, q_idx, kv_idx):
        return score + bd[b, h, q_idx, n - 1 + kv_idx - q_idx]

    block_mask = None
    if causal:
        block_mask = create_block_mask(lambda b, h, qi, kv: kv <= qi, None, None, n, n, device=q.device)
    return flex_attention(q + u[:, None, :].to(q.dtype), k, v, score_mod=score_mod, block_mask=block_mask)


register_backend(SPEC, Backend.SDPA)(rel_sdpa)
register_backend(SPEC, Backend.FLEX, can_run=flex_can_run)(rel_flex)
