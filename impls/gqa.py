"""Grouped-query attention — "GQA: Training Generalized Multi-Query Transformer Models from
Multi-Head Checkpoints" (Ainslie et al., 2023), arXiv 2305.13245.

Dense softmax attention where each group of `groups` query heads shares one key/value head:
query head h reads kv head h // groups (`H_kv = H_q / groups`). The KV cache shrinks by `groups`.
Naming: `groups` here is the query heads per kv head (the spec card's G); the paper's "GQA-8"
counts kv heads instead (8 kv heads), i.e. `groups = H_q / 8`.
"""

from __future__ import annotations

import torch

from attnbench.flops import dense_flops
from attnbench.ops import causal_mask, causal_mask_mod, dense_attention, expect_kv_heads
from attnbench.ops import dense_kv_cache_bytes as kv_cache_bytes
from attnbench.registry import register_method
from attnbench.spec import AttentionSpec, Capabilities, Paper, Params, Workload


def adapt_groups(w: Workload, params: Params) -> Workload:
    """Set `heads_kv = heads_q // groups`; leaves `w` as is when that is impossible (see `check`)."""
    g = params["groups"]
    if isinstance(g, int) and g >= 1 and w.heads_q % g == 0:
        return w.replace(heads_kv=w.heads_q // g)
    return w


def check_groups(w: Workload, params: Params) -> str | None:
    """Why `groups` cannot split the query heads of `w` evenly, or None."""
    g = params["groups"]
    if not isinstance(g, int) or g < 1:
        return f"gqa: groups must be a positive integer, got {g!r}"
    if w.heads_q % g:
        return f"gqa: heads_q={w.heads_q} is not divisible by groups={g}"
    if w.heads_kv * g != w.heads_q:
        return f"gqa: groups={g} needs heads_kv={w.heads_q // g}, got heads_kv={w.heads_kv}"
    return None


SPEC = AttentionSpec(
    name="gqa",
    title="Grouped-query attention",
    paper=Paper("GQA: Training Generalized Multi-Query Transformer Models from Multi-Head Checkpoints",
                2023, "2305.13245"),
    family="dense",
    defaults={"groups": 4},
    capabilities=Capabilities(gqa=True),
    flops=dense_flops,
    kv_cache_bytes=kv_cache_bytes,
    adapt=adapt_groups,
    check=check_groups,
    mask_mod=causal_mask_mod,
    claims=("GQA-8 uptrained from MHA reaches quality close to MHA at speed close to MQA.",),
)


@register_method(SPEC)
def gqa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
        groups: int = 4) -> torch.Tensor:
    """Reference GQA.

    Args:
        q: `[B, Hq, Nq, D]`; k, v: `[B, Hq // groups, Nk, D]`.
        causal: bottom-right aligned causal mask (`j ≤ i + Nk − Nq`).
        groups: query heads per kv head.
    Returns:
        `[B, Hq, Nq, D]` in q's dtype.
    """
    expect_kv_heads(q, k, v, q.shape[1] // groups, "gqa")
    mask = causal_mask(q.shape[-2], k.shape[-2], q.device) if causal else None
    return dense_attention(q, k, v, mask)
