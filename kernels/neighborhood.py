"""Native (plain torch) NA/GNA: space-aware Q tiles with haloed KV tiles, after Fused NA.

Queries are grouped into tiles (tile-major order on the grid); each tile gathers the union of
its queries' windows (the "halo", from the index table) once, then runs one dense GEMM →
masked softmax → GEMM, chunked over tiles so memory stays O(chunk·tile·halo). GNA (stride > 1)
uses the same kernel.

Executed FLOPs: the haloed form computes, per (batch, query head), N × (widest halo) scores
(every tile is padded to the widest); `multi_dim_tiles` is NATTENSim over NATTEN-style
multi-dimensional tiles (token-permuted, `TILE_TOKENS` per tile), the count of the natten peer on
GPU and the `sim_speedup` every 2-D/3-D NA/GNA row reports.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from attnbench.flops import SOFTMAX_FLOPS_PER_SCORE, all_pairs_flops, core_flops, register_tile_sim
from attnbench.impls.neighborhood import (
    SPEC,
    NAConfig,
    axis_masks,
    chunked_tile_stats,
    index_table,
    na_config,
    na_mask_rows,
    tile_permutation,
    workload_config,
)
from attnbench.registry import register_backend
from attnbench.spec import AttentionSpec, Backend, FlopCount, Params, Workload

TILE_TOKENS = 128  # tokens per Q and KV tile of the multi-dimensional tiling

CHUNK_BYTES = 32 * 2**20  # gathered K (and V) per chunk


def _tile_shape(shape: tuple[int, ...], target: int = 64) -> tuple[int, ...]:
    """Per-axis Q tile: the largest divisor of each axis near target**(1/rank)."""
    side = max(1, round(target ** (1.0 / len(shape))))
    return tuple(max(t for t in range(1, min(n, side) + 1) if n % t == 0) for n in shape)


@dataclass(frozen=True, slots=True)
class TiledPlan:
    """Q tiles (tile-major order `perm`) with the union of their windows as haloed KV tiles."""

    perm: torch.Tensor  # [N] query order (tile-major)
    inv: torch.Tensor  # [N] inverse of perm
    kv_idx: torch.Tensor  # [T, L] keys of each tile's halo (padded with a masked dummy)
    mask: torch.Tensor | None  # [T, Q, L] allowed entries (None: all)
    q_per_tile: int


def tiled_plan(cfg: NAConfig, device: torch.device | str = "cpu", target: int = 64) -> TiledPlan:
    """Build the tile plan: per Q tile, the sorted union of its queries' keys and the mask."""
    if (why := cfg.problem()) is not None:
        raise ValueError(why)
    tile = _tile_shape(cfg.shape, target)
    perm = tile_permutation(cfg.shape, tile).to(device)
    q_per_tile = math.prod(tile)
    idx, valid = index_table(cfg, device)
    rows = perm.view(-1, q_per_tile)
    keys = [torch.unique(idx[r][valid[r]]) for r in rows]
    width = max(len(kk) for kk in keys)
    kv_idx = torch.zeros(len(keys), width, dtype=torch.long, device=device)
    present = torch.zeros(len(keys), width, dtype=torch.bool, device=device)
    for t, kk in enumerate(keys):
        kv_idx[t, :len(kk)], present[t, :len(kk)] = kk, True
    masks = axis_masks(cfg, device)
    mask = torch.stack([na_mask_rows(cfg, r, masks)[:, kv_idx[t]] for t, r in enumerate(rows)])
    mask &= present[:, None, :]
    return TiledPlan(perm, perm.argsort(), kv_idx, None if bool(mask.all()) else mask, q_per_tile)


def tiled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: TiledPlan) -> torch.Tensor:
    """Haloed-tile attention: per Q tile, one dense GEMM over its gathered KV halo, masked.

    Args:
        q: `[B, Hq, N, D]`; k, v: `[B, Hkv, N, D]`.
    Returns:
        `[B, Hq, N, D]`.
    """
    b, hq, n, d = q.shape
    hkv = k.shape[1]
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    g, (nt, width), qt = hq // hkv, plan.kv_idx.shape, plan.q_per_tile
    chunk = max(1, CHUNK_BYTES // max(1, b * hq * (qt + width) * max(d, width) * 4))
    # [B, Hkv, tiles, G·Q, D]: the G query heads sharing a kv head stack as extra tile rows
    qp = q[:, :, plan.perm].view(b, hkv, g, nt, qt, d).transpose(2, 3).reshape(b, hkv, nt, g * qt, d)
    out = []
    for a in range(0, nt, chunk):
        kv = plan.kv_idx[a:a + chunk]
        c = kv.shape[0]
        kg = k.index_select(2, kv.flatten()).view(b, hkv, c, width, d)
        vg = v.index_select(2, kv.flatten()).view(b, hkv, c, width, d)
        s = (qp[:, :, a:a + c] @ kg.transpose(-1, -2)).to(acc) * d**-0.5  # [B, Hkv, c, G·Q, L]
        if plan.mask is not None:
            s = s.view(b, hkv, c, g, qt, width).masked_fill(~plan.mask[a:a + c, None], float("-inf"))
            s = s.view(b, hkv, c, g * qt, width)
        out.append(torch.softmax(s, dim=-1).to(v.dtype) @ vg)
    o = torch.cat(out, dim=2).view(b, hkv, nt, g, qt, d).transpose(2, 3).reshape(b, hq, n, d)
    return o[:, :, plan.inv]


def staged_tiled(cfg: NAConfig, device: torch.device) -> Callable[..., torch.Tensor]:
    """Build the tile plan once (setup); return `(q, k, v) -> o`."""
    plan = tiled_plan(cfg, device)
    return lambda q, k, v: tiled_attention(q, k, v, plan)


@functools.lru_cache(maxsize=32)
def halo_width(cfg: NAConfig) -> int:
    """Widest haloed KV tile of the native plan (every tile is padded to it)."""
    return int(tiled_plan(cfg).kv_idx.shape[1])


def haloed_flops_of(spec: AttentionSpec) -> Callable[[Workload, Params], FlopCount]:
    def flops(w: Workload, params: Params) -> FlopCount:
        cfg = workload_config(w, params)
        pairs = cfg.n * halo_width(cfg)
        return FlopCount(useful=spec.flops(w, params).useful, executed=core_flops(w, pairs),
                         softmax=SOFTMAX_FLOPS_PER_SCORE * w.batch * w.heads_q * pairs)
    return flops


def tile_shapes(shape: tuple[int, ...], tokens: int = TILE_TOKENS) -> list[tuple[int, ...]]:
    """Tile shapes of `tokens` tokens, powers of two per axis, each dividing its axis."""
    pows = [[2**e for e in range(int(math.log2(tokens)) + 1) if n % 2**e == 0] for n in shape]
    return [t for t in itertools.product(*pows) if math.prod(t) == tokens]


@functools.lru_cache(maxsize=32)
def multi_dim_tiles(cfg: NAConfig, tokens: int = TILE_TOKENS) -> dict[str, float] | None:
    """NATTENSim: the best multi-dimensional tiling (Q and KV tiles of the same shape, tokens
    permuted tile-major): visited tiles, total tiles, the tile shape. None when no shape fits."""
    if cfg.n < tokens:
        return None
    masks = axis_masks(cfg)
    best: dict[str, float] | None = None
    for tile in tile_shapes(cfg.shape, tokens):
        perm = tile_permutation(cfg.shape, tile)
        st = chunked_tile_stats(lambda r, perm=perm: na_mask_rows(cfg, perm[r], masks)[:, perm], cfg.n,
                                (tokens, tokens))
        if best is None or st["tiles_visited"] < best["tiles_visited"]:
            best = {**st, "tile": tile}
    return best


def multi_dim_flops_of(spec: AttentionSpec) -> Callable[[Workload, Params], FlopCount | None]:
    def flops(w: Workload, params: Params) -> FlopCount:
        useful = spec.flops(w, params).useful
        if w.device == "cpu":  # natten on CPU: eager flex, no token permute, every score
            return all_pairs_flops(w, useful)
        sim = multi_dim_tiles(workload_config(w, params))
        if sim is None:
            return FlopCount(useful=useful, executed=None)
        pairs = sim["tiles_visited"] * TILE_TOKENS**2
        return FlopCount(useful=useful, executed=core_flops(w, pairs),
                         softmax=SOFTMAX_FLOPS_PER_SCORE * w.batch * w.heads_q * pairs)
    return flops


def na_sim_speedup(w: Workload, params: Params) -> float | None:
    """NATTENSim's bound over dense at the best multi-dimensional tiling (2-D/3-D grids only)."""
    cfg = workload_config(w, params)
    if len(cfg.shape) < 2:
        return None
    sim = multi_dim_tiles(cfg)
    return None if sim is None else sim["tiles_total"] / max(sim["tiles_visited"], 1.0)


register_tile_sim(SPEC, na_sim_speedup)


@register_backend(SPEC, Backend.NATIVE, staged=True, flops=haloed_flops_of(SPEC))
def neighborhood_gather(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                        kernel_size: int | Sequence[int] = 7, dilation: int | Sequence[int] = 1,
                        is_causal: bool | Sequence[bool] = False, dims: int = 1,
                        spatial: Sequence[int] | None = None) -> Callable[..., Any]:
    """Staged: index table as setup, then the chunked gather-einsum attention."""
    cfg = na_config(q.shape[-2], causal, {"kernel_size": kernel_size, "dilation": dilation,
                                          "is_causal": is_causal, "dims": dims}, spatial)
    return staged_tiled(cfg, q.device)
