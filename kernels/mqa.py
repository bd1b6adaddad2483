"""Fused MQA: PyTorch SDPA with `enable_gqa` and a single kv head.

FlexAttention covers MQA through the generic flex backends (spec `mask_mod` + `enable_gqa`).
"""

from __future__ import annotations

import torch

from attnbench.impls.mqa import SPEC
from attnbench.kernels.mha import mha_sdpa
from attnbench.ops import expect_kv_heads, sdpa_can_run
from attnbench.registry import register_backend
from attnbench.spec import Backend


@register_backend(SPEC, Backend.SDPA, can_run=sdpa_can_run)
def mqa_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
    """`F.scaled_dot_product_attention(..., enable_gqa=True)`; k, v `[B, 1, Nk, D]`."""
    expect_kv_heads(q, k, v, 1, "mqa")
    return mha_sdpa(q, k, v, causal=causal)
