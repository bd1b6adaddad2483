"""Generalized Neighborhood Attention (GNA) — "Generalized Neighborhood Attention: Multi-dimensional
Sparse Attention at the Speed of Light", arXiv 2504.16922.

NA plus a stride s: the queries of a stride group share the window of the group's leader (its
centre; the last query when causal). s = 1 is NA, s = k is blocked (Swin-style, unshifted)
attention. Also NATTENSim-lite: analytic tile counts and the speedup bound over dense.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from attnbench import density
from attnbench.flops import SOFTMAX_FLOPS_PER_SCORE
from attnbench.impls.neighborhood import (
    adapt,
    axis_masks,
    check,
    chunked_tile_stats,
    kernel_choices,
    mask_mod,
    na_config,
    na_flops,
    na_mask,
    na_mask_rows,
    tile_permutation,
)
from attnbench.ops import dense_attention
from attnbench.registry import register_method
from attnbench.spec import AttentionSpec, Capabilities, Paper, Params, Workload


def natten_sim(shape: Sequence[int], kernel_size: int | Sequence[int], stride: int | Sequence[int] = 1,
               dilation: int | Sequence[int] = 1, is_causal: bool | Sequence[bool] = False, *,
               q_tile: int | Sequence[int] = 128, kv_tile: int | Sequence[int] = 128,
               batch: int = 1, heads: int = 1, head_dim: int = 64) -> dict[str, float]:
    """NATTENSim-lite: FLOPs and tile counts of one (G)NA problem at one tiling.

    Args:
        shape: token grid; kernel_size/stride/dilation/is_causal: one value or one per axis.
        q_tile, kv_tile: ints = 1-D tiles of the row-major flattened sequence; tuples = tile
            shapes of a multi-dimensional tiling (tokens permuted tile-major, as NATTEN does).
    Returns:
        flops_useful (allowed pairs), flops_executed (visited tiles in full), flops_dense,
        tiles_total / tiles_visited / tiles_full / tiles_partial, sim_speedup (total / visited
        tiles: the upper bound over dense), flop_speedup (dense / useful FLOPs).
    """
    shape = tuple(shape)
    cfg = na_config(math.prod(shape), False, {"kernel_size": kernel_size, "stride": stride,
                                              "dilation": dilation, "is_causal": is_causal}, shape)
    if (why := cfg.problem()) is not None:
        raise ValueError(why)
    masks = axis_masks(cfg)
    if isinstance(q_tile, int) and isinstance(kv_tile, int):
        block = (q_tile, kv_tile)
        stats = chunked_tile_stats(lambda r: na_mask_rows(cfg, r, masks), cfg.n, block)
    else:
        qt = tuple(q_tile) if not isinstance(q_tile, int) else (q_tile,)
        kt = tuple(kv_tile) if not isinstance(kv_tile, int) else (kv_tile,)
        qperm, kperm = tile_permutation(shape, qt), tile_permutation(shape, kt)
        block = (math.prod(qt), math.prod(kt))
        stats = chunked_tile_stats(lambda r: na_mask_rows(cfg, qperm[r], masks)[:, kperm], cfg.n, block)
    pairs = math.prod(float(m.sum()) for m in masks)
    unit = 4.0 * batch * heads * head_dim
    return {"flops_useful": unit * pairs,
            "flops_executed": unit * stats["tiles_visited"] * block[0] * block[1],
            "flops_dense": unit * cfg.n * cfg.n,
            "softmax_flops": SOFTMAX_FLOPS_PER_SCORE * batch * heads * pairs,
            **{k: v for k, v in stats.items() if k != "tile_speedup_bound"},
            "sim_speedup": stats["tile_speedup_bound"],
            "flop_speedup": cfg.n * cfg.n / pairs}


def at_density(w: Workload, target: float, params: Params) -> dict:
    """Kernel size (all axes) attending `target` of the allowed pairs, the stride kept at the
    params' stride/kernel ratio (the default 16/16 stays blocked, 1 stays NA)."""
    k0, s0 = (v[0] if isinstance(v, (list, tuple)) else v for v in (params["kernel_size"], params["stride"]))
    return density.pick(kernel_choices(w, params, stride_ratio=s0 / k0), target)


SPEC = AttentionSpec(
    name="gna",
    title="Generalized neighborhood attention (stride: sliding → strided → blocked)",
    paper=Paper("Generalized Neighborhood Attention: Multi-dimensional Sparse Attention at the "
                "Speed of Light", 2025, "2504.16922"),
    family="sparse-local",
    defaults={"kernel_size": 16, "stride": 16, "dilation": 1, "is_causal": False, "dims": 1},
    capabilities=Capabilities(causal=True, noncausal=True, gqa=True, backward=True, dims=(1, 2, 3)),
    flops=na_flops,
    adapt=adapt,
    check=check,
    mask_mod=mask_mod,
    at_density=at_density,
    claims=("1.3 PFLOP/s effective FP16 on B200; the theoretical speedup is realised in many "
            "perfectly block-sparse cases.",
            "28–46% end-to-end speedup on B200 for Cosmos-7B, HunyuanVideo and FLUX without fine-tuning."),
)


@register_method(SPEC)
def gna(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
        kernel_size: int | Sequence[int] = 16, stride: int | Sequence[int] = 16,
        dilation: int | Sequence[int] = 1, is_causal: bool | Sequence[bool] = False, dims: int = 1,
        spatial: Sequence[int] | None = None) -> torch.Tensor:
    """Reference GNA: dense mask from the leader predicate + masked softmax.

    Args:
        q: `[B, Hq, N, D]`; k, v: `[B, Hkv, N, D]`, N = prod(spatial).
        kernel_size, stride, dilation, is_causal: one value or one per axis (stride ≤ kernel).
        dims: grid rank when `spatial` is not given (square/cubic grid of N).
    Returns:
        `[B, Hq, N, D]`.
    """
    cfg = na_config(q.shape[-2], causal, {"kernel_size": kernel_size, "stride": stride,
                                          "dilation": dilation, "is_causal": is_causal, "dims": dims},
                    spatial)
    if (why := cfg.problem()) is not None:
        raise ValueError(why)
    mask = na_mask(cfg, q.device)
    density.record_mask(mask, causal=causal, batch=q.shape[0], heads=q.shape[1])
    return dense_attention(q, k, v, mask)
