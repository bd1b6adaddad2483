"""Multi-head attention — "Attention Is All You Need" (Vaswani et al., 2017), arXiv 1706.03762.

The dense baseline every other method is compared with (`mha/sdpa`). Also covers GQA inputs.
"""

from __future__ import annotations

import torch

from attnbench.flops import dense_flops
from attnbench.ops import causal_mask, causal_mask_mod, dense_attention, dense_kv_cache_bytes
from attnbench.registry import register_method
from attnbench.spec import AttentionSpec, Capabilities, Paper

SPEC = AttentionSpec(
    name="mha",
    title="Multi-head attention",
    paper=Paper("Attention Is All You Need", 2017, "1706.03762"),
    family="dense",
    capabilities=Capabilities(gqa=True, dims=(1, 2, 3)),
    flops=dense_flops,
    kv_cache_bytes=dense_kv_cache_bytes,
    mask_mod=causal_mask_mod,
    claims=("Dense softmax attention: O(N²) time, O(N) memory with fused kernels.",),
)


@register_method(SPEC)
def mha(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
    """Reference dense attention, `[B, H, N, D]` in and out."""
    mask = causal_mask(q.shape[-2], k.shape[-2], q.device) if causal else None
    return dense_attention(q, k, v, mask)
