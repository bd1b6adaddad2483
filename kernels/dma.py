"""DMA fused backends: FlexAttention with the key bias as `score_mod` and the top-w keep mask as
`mask_mod`, and a BlockMask from the block-OR of keep, so KV tiles with nothing kept are skipped.

Staged: the routing (dt projection, top-w) and the BlockMask build run in setup (`setup_ms`);
the steady-state call is the flex kernel only.
"""

from __future__ import annotations

import torch

from attnbench.impls.dma import SPEC, dma_routing
from attnbench.kernels.moba import FlexPlan, block_mask_from_dense, register_flex


def _plan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True, window: int = 2048,
          a: float = 1.0, seed: int = 0, shared_selection: bool = False, exp_bias: bool = False) -> FlexPlan:
    if not causal:
        raise ValueError("dma is causal only")
    bias, keep = dma_routing(v, q.shape[2], window=window, a=a, seed=seed,
                             shared_selection=shared_selection, exp_bias=exp_bias)
    g = q.shape[1] // k.shape[1]
    bias = bias[:, :, 0]  # [B, Hkv, Nk]

    def score_mod(score, b, h, q_idx, kv_idx):
        return score + bias[b, h // g, kv_idx]

    def mask_mod(b, h, q_idx, kv_idx):
        return keep[b, h // g, q_idx, kv_idx]

    tiles = keep.repeat_interleave(g, dim=1) if g > 1 else keep
    return FlexPlan(block_mask_from_dense(tiles, mask_mod=mask_mod), score_mod=score_mod)


register_flex(SPEC, _plan)
