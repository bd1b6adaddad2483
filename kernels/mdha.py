"""Fused attention step of MDHA: the convolved q, k, v go through PyTorch SDPA."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnbench.impls.mdha import SPEC
from attnbench.registry import register_backend
from attnbench.spec import Backend


@register_backend(SPEC, Backend.SDPA)
def mdha_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
    """`F.scaled_dot_product_attention` on `[B, H, N, D]` (Nq == Nk)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
