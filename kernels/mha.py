"""Fused dense attention: PyTorch SDPA (flash / memory-efficient / math, as dispatched)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnbench.impls.mha import SPEC
from attnbench.ops import sdpa_can_run
from attnbench.registry import register_backend
from attnbench.spec import Backend


@register_backend(SPEC, Backend.SDPA, can_run=sdpa_can_run)
def mha_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
    """`F.scaled_dot_product_attention`, GQA through `enable_gqa`."""
    if causal and q.shape[-2] != k.shape[-2]:
        raise ValueError("causal SDPA with Nq != Nk uses top-left alignment; not supported here")
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=q.shape[1] != k.shape[1])
