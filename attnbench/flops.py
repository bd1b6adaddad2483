"""Analytic FLOPs (1 multiply-add = 2 FLOPs) and the FlopCounterMode cross-check.

Attention core = 4·B·Hq·(#allowed pairs)·D; softmax ≈ 5 FLOPs per computed score, reported apart.
`useful` counts allowed pairs; `executed` counts every entry of the (Q-tile, KV-tile) pairs a
blocked kernel visits.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from attnbench.spec import FlopCount, Params, Workload

SOFTMAX_FLOPS_PER_SCORE = 5


def causal_pairs(nq: int, nk: int) -> int:
    """Allowed pairs of a bottom-right aligned causal mask."""
    offset = nk - nq
    return sum(max(0, min(nk, i + offset + 1)) for i in range(nq)) if offset else nq * (nq + 1) // 2


def core_flops(w: Workload, pairs: float) -> float:
    """4·B·Hq·pairs·D, with `pairs` the allowed (query, key) pairs of one (batch, head)."""
    return 4.0 * w.batch * w.heads_q * pairs * w.head_dim


def dense_flops(w: Workload, params: Params | None = None) -> FlopCount:
    """Dense (or causal) attention; executed = useful, since kernels skip fully masked tiles."""
    pairs = causal_pairs(w.seq_q, w.seq_kv) if w.causal else w.seq_q * w.seq_kv
    useful = core_flops(w, pairs)
    return FlopCount(useful=useful, executed=useful,
                     softmax=SOFTMAX_FLOPS_PER_SCORE * w.batch * w.heads_q * pairs)


def projection_flops(w: Workload) -> float:
    """Q, K, V and output projections of the generic attention layer on `x [B, N, C]`."""
    c, kv = w.d_model, w.heads_kv * w.head_dim
    return 2.0 * w.batch * w.seq_q * c * (2 * c + 2 * kv)


def mask_flops(w: Workload, mask: torch.Tensor, *, block: tuple[int, int] = (128, 128)) -> FlopCount:
    """FLOPs of a boolean mask `[Nq, Nk]` or `[B|1, H|1, Nq, Nk]`.

    useful = allowed entries; executed = Q×KV tiles with any allowed entry, counted in full.
    """
    m = mask if mask.dim() == 4 else mask[None, None]
    reps = (w.batch // m.shape[0]) * (w.heads_q // m.shape[1])
    allowed = float(m.sum()) * reps
    visited = float(visited_tiles(m, block).sum()) * reps
    return FlopCount(useful=4.0 * allowed * w.head_dim,
                     executed=4.0 * visited * block[0] * block[1] * w.head_dim,
                     softmax=SOFTMAX_FLOPS_PER_SCORE * allowed)


def visited_tiles(mask: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """`[..., ⌈Nq/bq⌉, ⌈Nk/bk⌉]` booleans: does the tile hold any allowed entry?"""
    bq, bk = block
    nq, nk = mask.shape[-2:]
    pad_q, pad_k = (-nq) % bq, (-nk) % bk
    m = torch.nn.functional.pad(mask.to(torch.uint8), (0, pad_k, 0, pad_q))
    m = m.unflatten(-1, (-1, bk)).unflatten(-3, (-1, bq))  # [..., tq, bq, tk, bk]
    return m.amax(dim=(-3, -1)).bool()


def tile_stats(mask: torch.Tensor, block: tuple[int, int]) -> dict[str, float]:
    """Visited, fully dense and partial tile counts and the tile-level upper-bound speedup."""
    bq, bk = block
    nq, nk = mask.shape[-2:]
    visited = visited_tiles(mask, block)
    padded = torch.nn.functional.pad(mask.to(torch.uint8), (0, (-nk) % bk, 0, (-nq) % bq))
    full = padded.unflatten(-1, (-1, bk)).unflatten(-3, (-1, bq)).amin(dim=(-3, -1)).bool()
    total = float(visited[..., :, :].numel())
    n_visited = float(visited.sum())
    return {"tiles_total": total, "tiles_visited": n_visited, "tiles_full": float(full.sum()),
            "tiles_partial": n_visited - float(full.sum()),
            "tile_speedup_bound": total / max(n_visited, 1.0)}


def _sdpa_flop(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    b, h, n, d = query_shape
    _, _, m, dv = value_shape
    return 2 * b * h * n * m * d + 2 * b * h * n * m * dv


@functools.cache
def _register_cpu_sdpa_formula() -> None:
    """FlopCounterMode has no formula for the CPU fused SDPA op; register one (idempotent)."""
    from torch.utils.flop_counter import register_flop_formula

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None:
        return

    @register_flop_formula(op)
    def _formula(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None,
                 **kwargs: Any) -> int:
        return _sdpa_flop(query_shape, key_shape, value_shape)


def counted_flops(fn: Callable[[], Any]) -> float | None:
    """Total FLOPs FlopCounterMode sees for one call of `fn`; None where it cannot count."""
    from torch.utils.flop_counter import FlopCounterMode

    _register_cpu_sdpa_formula()
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    except Exception:  # the counter cannot trace it (e.g. flex_attention) — or the method itself fails:
        fn()  # a method's own fault raises again here, outside the counter, and becomes its status row
        return None
    return float(counter.get_total_flops())
