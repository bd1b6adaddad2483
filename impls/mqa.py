"""Multi-query attention — "Fast Transformer Decoding: One Write-Head is All You Need"
(Shazeer, 2019), arXiv 1911.02150.

Dense softmax attention where every query head shares a single key/value head (`H_kv = 1`):
the KV cache is `H_q` times smaller than MHA's.
"""

from __future__ import annotations

import torch

from attnbench.flops import dense_flops
from attnbench.ops import causal_mask, causal_mask_mod, dense_attention, expect_kv_heads
from attnbench.ops import dense_kv_cache_bytes as kv_cache_bytes
from attnbench.registry import register_method
from attnbench.spec import AttentionSpec, Capabilities, Paper, Params, Workload


def adapt_single_kv(w: Workload, params: Params) -> Workload:
    """One kv head for all query heads."""
    return w.replace(heads_kv=1)


def check_single_kv(w: Workload, params: Params) -> str | None:
    return None if w.heads_kv == 1 else f"mqa: needs heads_kv=1, got heads_kv={w.heads_kv}"


SPEC = AttentionSpec(
    name="mqa",
    title="Multi-query attention",
    paper=Paper("Fast Transformer Decoding: One Write-Head is All You Need", 2019, "1911.02150"),
    family="dense",
    capabilities=Capabilities(gqa=True),
    flops=dense_flops,
    kv_cache_bytes=kv_cache_bytes,
    adapt=adapt_single_kv,
    check=check_single_kv,
    mask_mod=causal_mask_mod,
    claims=("Much faster incremental decoding than MHA (smaller KV cache) with minor quality loss.",),
)


@register_method(SPEC)
def mqa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
    """Reference MQA.

    Args:
        q: `[B, Hq, Nq, D]`; k, v: `[B, 1, Nk, D]`.
        causal: bottom-right aligned causal mask (`j ≤ i + Nk − Nq`).
    Returns:
        `[B, Hq, Nq, D]` in q's dtype.
    """
    expect_kv_heads(q, k, v, 1, "mqa")
    mask = causal_mask(q.shape[-2], k.shape[-2], q.device) if causal else None
    return dense_attention(q, k, v, mask)
