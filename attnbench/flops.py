"""Analytic FLOPs (1 multiply-add = 2 FLOPs) and the FlopCounterMode cross-check.

Attention core = 4·B·Hq·(#allowed pairs)·D; softmax ≈ 5 FLOPs per computed score, reported apart.
`useful` counts allowed pairs; `executed` counts every entry of the (Q-tile, KV-tile) pairs a
blocked kernel visits. Each sparse backend registers its own executed count (`Impl.flops`, at the
granularity it runs: flex BlockMask tiles, banded/haloed tiles, blocked SDPA, skipped heads);
`backend_flops` is what the suites read, and a backend without such a model gets no bound.
Input-dependent routing (gates, top-k, dt projection) is in both `useful` and `executed`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from attnbench.spec import AttentionSpec, FlopCount, Params, Workload

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


def all_pairs_flops(w: Workload, useful: float, routing: float = 0.0) -> FlopCount:
    """A kernel that computes every (query, key) score and masks afterwards (SDPA with a mask,
    eager flex, the dense references): executed = 4·B·Hq·Nq·Nk·D, plus `routing`."""
    pairs = w.seq_q * w.seq_kv
    return FlopCount(useful=useful + routing, executed=core_flops(w, pairs) + routing,
                     softmax=SOFTMAX_FLOPS_PER_SCORE * w.batch * w.heads_q * pairs)


def block_mask_visited(block_mask: Any) -> tuple[float, tuple[int, int]]:
    """(visited tiles summed over the BlockMask's batch/head dims, (Q block, KV block))."""
    visited = block_mask.kv_num_blocks.sum()
    if block_mask.full_kv_num_blocks is not None:
        visited = visited + block_mask.full_kv_num_blocks.sum()
    bq, bk = block_mask.BLOCK_SIZE
    return float(visited), (int(bq), int(bk))


def block_mask_flops(w: Workload, block_mask: Any, useful: float, routing: float = 0.0) -> FlopCount:
    """Executed FLOPs of compiled flex on `block_mask` (each visited tile in full), broadcast over
    the batch/head dims the BlockMask leaves at 1; `useful` and `routing` come from the method."""
    visited, (bq, bk) = block_mask_visited(block_mask)
    lead = block_mask.kv_num_blocks.shape[:2]
    reps = (w.batch // int(lead[0])) * (w.heads_q // int(lead[1]))
    executed = 4.0 * visited * reps * bq * bk * w.head_dim
    return FlopCount(useful=useful + routing, executed=executed + routing,
                     softmax=SOFTMAX_FLOPS_PER_SCORE * visited * reps * bq * bk)


def with_routing(fc: FlopCount, routing: float) -> FlopCount:
    """`fc` with input-dependent routing FLOPs added to useful and executed."""
    ex = None if fc.executed is None else fc.executed + routing
    return FlopCount(useful=fc.useful + routing, executed=ex, softmax=fc.softmax)


def block_routing_flops(w: Workload, block: int) -> float:
    """MoBA-style router on `w`: key-block means (N·D adds), gate scores q·k̄ (2·N·n_blocks·D),
    top-k over n_blocks per query; per (batch, head)."""
    nblk = -(-w.seq_kv // block)
    return w.batch * w.heads_q * (w.seq_kv * w.head_dim + 2.0 * w.seq_q * nblk * w.head_dim + w.seq_q * nblk)


def backend_flops(spec: AttentionSpec, impl: Any, w: Workload, params: Params) -> FlopCount | None:
    """The FLOPs of `impl` (a registry Impl) on `w`: useful from the spec (or the backend's own
    count, which adds its routing), executed only where the backend models its own execution.

    Returns None when neither the backend nor the spec counts anything; `executed` is None when
    the backend has no model of its own execution (the suites then report no bound)."""
    if impl.flops is not None:
        return impl.flops(w, params)
    if spec.flops is None:
        return None
    fc = spec.flops(w, params)
    return FlopCount(useful=fc.useful, executed=None, softmax=fc.softmax)


def speedup_bound(dense: float, executed: float | None) -> float | None:
    """Upper bound on the speedup over dense from FLOPs alone: dense / executed (None: no model)."""
    return dense / executed if executed else None


TileSim = Callable[[Workload, Params], "float | None"]
TILE_SIMS: dict[str, TileSim] = {}


def register_tile_sim(spec: AttentionSpec, fn: TileSim) -> None:
    """Register a tile simulator `(w, params) -> sim_speedup | None` for a method (e.g. NATTENSim
    over multi-dimensional tiles for 2-D/3-D NA/GNA); suites report it as `sim_speedup`."""
    TILE_SIMS[spec.name] = fn


def sim_speedup(spec: AttentionSpec, w: Workload, params: Params) -> float | None:
    fn = TILE_SIMS.get(spec.name)
    return fn(w, params) if fn is not None else None


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
