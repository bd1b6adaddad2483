"""Fused sliding-window attention: SDPA with a boolean window mask, and a banded native form.

SDPA still computes every score (the mask only hides them). The native form cuts the sequence
into query blocks and attends each block only to the key span its rows can see, O(N·(L + w)·D)
in plain torch ops, backward included (FlexAttention has none on CPU). FlexAttention, which skips
the tiles outside the band, comes from the generic flex backends through the spec's `mask_mod`.

Executed FLOPs (`Impl.flops`): SDPA with a mask computes all Nq·Nk scores; the banded form
computes C·L·S per (batch, head): C blocks of L queries (the last one padded) × S keys.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from attnbench.flops import SOFTMAX_FLOPS_PER_SCORE, all_pairs_flops, core_flops
from attnbench.impls.sliding_window import SPEC, window_allows, window_mask
from attnbench.registry import register_backend
from attnbench.spec import Backend, FlopCount, Params, Workload


def sdpa_flops(w: Workload, params: Params) -> FlopCount:
    return all_pairs_flops(w, SPEC.flops(w, params).useful)


def banded_shape(nq: int, window: int, causal: bool) -> tuple[int, int, int]:
    """(C, L, S) of the banded form: query blocks, queries per block, keys per block span."""
    before, after = (window - 1, 0) if causal else (window // 2, window // 2)
    L = min(NATIVE_BLOCK, nq)
    return -(-nq // L), L, L + before + after


def banded_flops(w: Workload, params: Params) -> FlopCount:
    blocks, rows, span = banded_shape(w.seq_q, params["window"], w.causal)
    pairs = blocks * rows * span
    return FlopCount(useful=SPEC.flops(w, params).useful, executed=core_flops(w, pairs),
                     softmax=SOFTMAX_FLOPS_PER_SCORE * w.batch * w.heads_q * pairs)


@register_backend(SPEC, Backend.SDPA, staged=True, flops=sdpa_flops)
def sliding_window_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                        window: int = 32) -> Callable[..., torch.Tensor]:
    """Build the `[Nq, Nk]` window mask once (setup); return `(q, k, v) -> o` running SDPA with it."""
    mask = window_mask(q.shape[-2], k.shape[-2], window=window, causal=causal, device=q.device)

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])

    return run


NATIVE_BLOCK = 64  # queries per block of the banded form


@register_backend(SPEC, Backend.NATIVE, staged=True, flops=banded_flops)
def sliding_window_banded(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                          window: int = 32) -> Callable[..., torch.Tensor]:
    """Banded attention: each block of L queries against the L + span − 1 keys it can reach.

    Setup builds the `[C, L, S]` block-local mask (C blocks, S keys per block); the call pads k/v,
    takes the overlapping key spans as strided views and runs a masked softmax per block.
    Args/returns as the reference: q `[B, Hq, Nq, D]`, k, v `[B, Hkv, Nk, D]` → `[B, Hq, Nq, D]`.
    """
    nq, nk = q.shape[-2], k.shape[-2]
    off = nk - nq  # query i sits at key position i + off (bottom-right alignment)
    before = window - 1 if causal else window // 2
    C, L, S = banded_shape(nq, window, causal)
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
