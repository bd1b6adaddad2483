"""DMA fused backends: FlexAttention with the key bias as `score_mod` and the top-w keep mask as
`mask_mod`, and a BlockMask from the block-OR of keep, so KV tiles with nothing kept are skipped.

Routing (dt projection, softplus, top-w) and the BlockMask build depend on the input: they run
inside every call and count in useful and executed FLOPs; `setup_ms` holds only compilation.
Executed: eager flex computes every score; compiled flex visits the BlockMask's 128×128 tiles.
"""

from __future__ import annotations

from typing import Any

import torch

from attnbench.flops import all_pairs_flops, mask_flops, with_routing
from attnbench.impls.dma import SPEC, dma_routing, routing_flops, seeded_keep
from attnbench.kernels.flex import FlexPlan, register_flex
from attnbench.spec import Backend, FlopCount, Params, Workload


def _plan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True, window: int = 2048,
          a: Any = 1.0, seed: int = 0, shared_selection: bool = False, exp_bias: bool = False,
          dt_weight: torch.Tensor | None = None) -> FlexPlan:
    if not causal:
        raise ValueError("dma is causal only")
    bias, keep = dma_routing(v, q.shape[2], window=window, a=a, seed=seed, shared_selection=shared_selection,
                             exp_bias=exp_bias, dt_weight=dt_weight)
    return FlexPlan(keep, bias=bias[:, :, 0], groups=q.shape[1] // k.shape[1])


def eager_flex_flops(w: Workload, params: Params) -> FlopCount:
    routing = routing_flops(w, params)
    return all_pairs_flops(w, SPEC.flops(w, params).useful - routing, routing)


def compiled_flex_flops(w: Workload, params: Params) -> FlopCount:
    return with_routing(mask_flops(w, seeded_keep(w, params)), routing_flops(w, params))


register_flex(SPEC, _plan, dynamic=True,
              flops={Backend.FLEX: eager_flex_flops, Backend.FLEX_COMPILED: compiled_flex_flops})
