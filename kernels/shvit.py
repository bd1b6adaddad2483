"""SHViT's single-head step on PyTorch SDPA (D_qk ≠ D_v is fine in the CPU and efficient kernels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from attnbench.impls.shvit import SPEC

from attnbench.registry import register_backend
from attnbench.spec import Backend


@register_backend(SPEC, Backend.SDPA)
def single_head_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q, k `[B, 1, N, D_qk]`, v `[B, 1, N, C_p]` → `[B, 1, N, C_p]`."""
    return F.scaled_dot_product_attention(q, k, v)
