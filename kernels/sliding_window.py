"""Fused sliding-window attention: SDPA with a boolean window mask, and a banded native form.

SDPA still computes every score (the mask only hides them). The native form cuts the sequence
into query blocks and attends each block only to the key span its rows can see, O(N·(L + w)·D)
in plain torch ops, backward included (FlexAttention has none on CPU). FlexAttention, which skips
the tiles outside the band, comes from the generic flex backends through the spec's `mask_mod`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from attnbench.impls.sliding_window import SPEC, window_allows, window_mask
from attnbench.registry import register_backend
from attnbench.spec import Backend


@register_backend(SPEC, Backend.SDPA, staged=True)
def sliding_window_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                        window: int = 32) -> Callable[..., torch.Tensor]:
    """Build the `[Nq, Nk]` window mask once (setup); return `(q, k, v) -> o` running SDPA with it."""
    mask = window_mask(q.shape[-2], k.shape[-2], window=window, causal=causal, device=q.device)

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])

    return run


NATIVE_BLOCK = 64  # queries per block of the banded form


@register_backend(SPEC, Backend.NATIVE, staged=True)
def sliding_window_banded(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                          window: int = 32) -> Callable[..., torch.Tensor]:
    """Banded attention: each block of L queries against the L + span − 1 keys it can reach.

    Setup builds the `[C, L, S]` block-local mask (C blocks, S keys per block); the call pads k/v,
    takes the overlapping key spans as strided views and runs a masked softmax per block.
    Args/returns as the reference: q `[B, Hq, Nq, D]`, k, v `[B, Hkv, Nk, D]` → `[B, Hq, Nq, D]`.
    """
    nq, nk = q.shape[-2], k.shape[-2]
    off = nk - nq  # query i sits at key position i + off (bottom-right alignment)
    before, after = (window - 1, 0) if causal else (window // 2, window // 2)
    L = min(NATIVE_BLOCK, nq)
    C, S = -(-nq // L), L + before + after
    left = before + max(0, -off)  # pad so every span starts at index >= 0
    first = max(off, 0)
    start = torch.arange(C, device=q.device) * L + first  # span start in padded key coords
    right = max(0, int(start[-1]) + S - left - nk)
    i = (torch.arange(C, device=q.device) * L)[:, None, None] + torch.arange(L, device=q.device)[:, None]
    j = start[:, None, None] + torch.arange(S, device=q.device) - left  # real key index, [C, 1, S]
    mask = window_allows(i, j, window=window, causal=causal, offset=off) & (j >= 0) & (j < nk) & (i < nq)

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        acc = torch.float64 if q.dtype == torch.float64 else torch.float32
        b, hq, _, d = q.shape
        hkv = k.shape[1]
        qb = F.pad(q.to(acc), (0, 0, 0, C * L - nq)).view(b, hkv, hq // hkv, C, L, d)
        kb, vb = (F.pad(t.to(acc), (0, 0, left, right))[..., first:, :].unfold(-2, S, L)[:, :, None, :C]
                  .transpose(-1, -2) for t in (k, v))  # [B, Hkv, 1, C, S, D], overlapping views
        s = (qb @ kb.transpose(-1, -2)) * d**-0.5
        p = torch.softmax(s.masked_fill(~mask, torch.finfo(acc).min), dim=-1) * mask  # empty rows → 0
        o = (p @ vb).flatten(3, 4)[..., :nq, :]
        return o.flatten(1, 2).to(q.dtype)

    return run
