"""VMoBA fused backends: route, permute tokens so blocks are contiguous, attend, permute back.

- `native` / `sdpa`: the per-KV-block gathered attention of kernels/moba.py (non-causal, own
  block included in the selection), merged by LSE, in torch ops / in the fused CPU SDPA kernel
  (forward only).
- `flex` / `flex_compiled`: the steady-state call routes, builds the BlockMask of the selection,
  permutes, runs flex with the selection captured in `mask_mod`, and un-permutes.

Routing runs inside every call on every backend (it depends on the input); its FLOPs are in
useful and executed. Executed per backend: gathered entries (native/sdpa), every score (eager
flex), the BlockMask's tiles in permuted order (compiled flex).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from attnbench.flops import SOFTMAX_FLOPS_PER_SCORE, all_pairs_flops, block_routing_flops, mask_flops, with_routing
from attnbench.impls.vmoba import SPEC, as_grid, chunk_sizes, vmoba_route
from attnbench.inputs import make_qkv
from attnbench.kernels.moba import (
    Attend,
    FlexPlan,
    attend_math,
    attend_sdpa_cpu,
    gathered_block_attention,
    gathered_pairs,
    register_flex,
    sdpa_lse_can_run,
)
from attnbench.registry import register_backend
from attnbench.spec import Backend, FlopCount, Params, Workload

ROUTE_KEYS = ("partition", "block", "select_mode", "topk", "threshold", "threshold_type")


def _route(q: torch.Tensor, k: torch.Tensor, causal: bool, spatial: Sequence[int] | None, **params):
    if causal:
        raise ValueError("vmoba is non-causal")
    return vmoba_route(q, k, grid=as_grid(q.shape[2], spatial), **params)


def _gathered(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, spatial: Sequence[int] | None,
              params: dict, attend: Attend) -> torch.Tensor:
    perm, sel, bs = _route(q, k, causal, spatial, **params)
    o = gathered_block_attention(q[:, :, perm], k[:, :, perm], v[:, :, perm], sel, bs, causal_self=False,
                                 attend=attend)
    return o[:, :, torch.argsort(perm)]


def _seeded_route(w: Workload, params: Params) -> tuple[torch.Tensor, torch.Tensor, int]:
    q, k, _ = make_qkv(w.replace(dtype="float32"), seed=0, device="cpu")
    return _route(q, k, False, w.spatial, **{key: params[key] for key in ROUTE_KEYS})


def _routing(w: Workload, params: Params) -> float:
    chunks = chunk_sizes(as_grid(w.seq_q, w.spatial), params["partition"], params["block"])
    return block_routing_flops(w, math.prod(chunks))


def gathered_flops(w: Workload, params: Params) -> FlopCount:
    """Native / SDPA: per KV block, the largest routed query count of any (batch, head), + routing."""
    _, sel, bs = _seeded_route(w, params)
    pairs = gathered_pairs(sel, bs, causal_self=False)
    routing = _routing(w, params)
    return FlopCount(useful=SPEC.flops(w, params).useful, executed=4.0 * pairs * w.head_dim + routing,
                     softmax=SOFTMAX_FLOPS_PER_SCORE * pairs)


def eager_flex_flops(w: Workload, params: Params) -> FlopCount:
    routing = _routing(w, params)
    return all_pairs_flops(w, SPEC.flops(w, params).useful - routing, routing)


def compiled_flex_flops(w: Workload, params: Params) -> FlopCount:
    _, sel, bs = _seeded_route(w, params)
    return with_routing(mask_flops(w, sel[..., torch.arange(w.seq_kv) // bs]), _routing(w, params))


@register_backend(SPEC, Backend.NATIVE, flops=gathered_flops)
def vmoba_native(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                 partition: str = "3d", block: Sequence[int] = (2, 8, 8), select_mode: str = "threshold",
                 topk: int = 3, threshold: float = 0.25, threshold_type: str = "query_head",
                 spatial: Sequence[int] | None = None) -> torch.Tensor:
    """Gathered block-sparse attention in permuted order, torch ops; params as the reference."""
    params = dict(partition=partition, block=block, select_mode=select_mode, topk=topk, threshold=threshold,
                  threshold_type=threshold_type)
    return _gathered(q, k, v, causal, spatial, params, attend_math)


@register_backend(SPEC, Backend.SDPA, can_run=sdpa_lse_can_run, flops=gathered_flops)
def vmoba_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
               partition: str = "3d", block: Sequence[int] = (2, 8, 8), select_mode: str = "threshold",
               topk: int = 3, threshold: float = 0.25, threshold_type: str = "query_head",
               spatial: Sequence[int] | None = None) -> torch.Tensor:
    """As `native`, each per-block branch in the fused CPU SDPA kernel (forward only)."""
    params = dict(partition=partition, block=block, select_mode=select_mode, topk=topk, threshold=threshold,
                  threshold_type=threshold_type)
    return _gathered(q, k, v, causal, spatial, params, attend_sdpa_cpu)


def _plan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
          spatial: Sequence[int] | None = None, **params) -> FlexPlan:
    perm, sel, bs = _route(q, k, causal, spatial, **params)
    cols = torch.arange(q.shape[2], device=q.device) // bs
    return FlexPlan(sel[..., cols], perm=perm[None])  # mask [B, H, N, N] in permuted order


register_flex(SPEC, _plan, dynamic=True,
              flops={Backend.FLEX: eager_flex_flops, Backend.FLEX_COMPILED: compiled_flex_flops})
