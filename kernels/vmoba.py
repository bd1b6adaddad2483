"""VMoBA fused backends: route, permute tokens so blocks are contiguous, attend, permute back.

- `native` / `sdpa`: the per-KV-block gathered attention of kernels/moba.py (non-causal, own
  block included in the selection), merged by LSE, in torch ops / in the fused CPU SDPA kernel
  (forward only); routing runs inside the call.
- `flex` / `flex_compiled` (staged): routing + BlockMask in setup; the steady-state call
  permutes, runs flex with the selection captured in `mask_mod`, and un-permutes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from attnbench.impls.vmoba import SPEC, as_grid, vmoba_route
from attnbench.kernels.moba import (
    Attend,
    FlexPlan,
    attend_math,
    attend_sdpa_cpu,
    block_mask_from_dense,
    gathered_block_attention,
    register_flex,
    sdpa_lse_can_run,
)
from attnbench.registry import register_backend
from attnbench.spec import Backend


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


@register_backend(SPEC, Backend.NATIVE)
def vmoba_native(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                 partition: str = "3d", block: Sequence[int] = (2, 8, 8), select_mode: str = "threshold",
                 topk: int = 3, threshold: float = 0.25, threshold_type: str = "query_head",
                 spatial: Sequence[int] | None = None) -> torch.Tensor:
    """Gathered block-sparse attention in permuted order, torch ops; params as the reference."""
    params = dict(partition=partition, block=block, select_mode=select_mode, topk=topk, threshold=threshold,
                  threshold_type=threshold_type)
    return _gathered(q, k, v, causal, spatial, params, attend_math)


@register_backend(SPEC, Backend.SDPA, can_run=sdpa_lse_can_run)
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
    mask = sel[..., cols]  # [B, H, N, N] in permuted order
    return FlexPlan(block_mask_from_dense(mask, mask_mod=lambda b, h, qi, ki: mask[b, h, qi, ki]),
                    perm=perm[None])


register_flex(SPEC, _plan)
