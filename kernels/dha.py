"""DHA attention step on PyTorch SDPA.

Shared, equal-size K/V groups (kmap == vmap) run as native GQA after permuting the query heads into
contiguous groups; decoupled maps expand K and V to the query heads first (Flex cannot remap V).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from attnbench.impls.dha import SPEC
from attnbench.registry import register_backend
from attnbench.spec import Backend


def _gqa_order(kmap: Sequence[int], vmap: Sequence[int], n_kv: int) -> list[int] | None:
    """Query-head order that makes the groups contiguous, when K and V share equal-size groups."""
    if tuple(kmap) != tuple(vmap) or len(kmap) % n_kv:
        return None
    if any(list(kmap).count(j) != len(kmap) // n_kv for j in range(n_kv)):
        return None
    return sorted(range(len(kmap)), key=lambda h: kmap[h])


@register_backend(SPEC, Backend.SDPA)
def decoupled_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, kmap: Sequence[int],
                             vmap: Sequence[int], causal: bool = False) -> torch.Tensor:
    """`[B, H, N, D]` q, `[B, n_K, N, D]` k, `[B, n_V, N, D]` v → `[B, H, N, D]`."""
    order = _gqa_order(kmap, vmap, k.shape[1]) if k.shape[1] == v.shape[1] else None
    if order is None:
        return F.scaled_dot_product_attention(q, k[:, list(kmap)], v[:, list(vmap)], is_causal=causal)
    identity = order == list(range(len(order)))
    qp = q if identity else q[:, order]
    o = F.scaled_dot_product_attention(qp, k, v, is_causal=causal, enable_gqa=k.shape[1] != q.shape[1])
    if identity:
        return o
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return o[:, inverse.tolist()]
