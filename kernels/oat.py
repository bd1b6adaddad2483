"""OAT's distance bias fused: FlexAttention with `score_mod = s + bias[h, q, kv]` (the bias captured,
so its table trains on GPU), and SDPA with the bias as a float `attn_mask`."""

from __future__ import annotations

import torch

from attnbench.impls.oat import SPEC
from attnbench.ops import flex_can_run, flex_runner
from attnbench.registry import register_backend
from attnbench.spec import Backend


@register_backend(SPEC, Backend.FLEX, can_run=flex_can_run)
def oat_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`[B, H, N, D]` attention with the `[H, N, N]` bias added to every score by a `score_mod`."""

    def distance_bias(score, b, h, q_idx, kv_idx):
        return score + bias[h, q_idx, kv_idx]

    return flex_runner(False)(q, k, v, score_mod=distance_bias)


@register_backend(SPEC, Backend.SDPA)
def oat_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`[B, H, N, D]` attention with the `[H, N, N]` bias as SDPA's additive float mask."""
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias[None])
