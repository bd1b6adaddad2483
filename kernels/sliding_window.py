"""Fused sliding-window attention: SDPA with a boolean window mask.

SDPA still computes every score (the mask only hides them); FlexAttention, which skips the tiles
outside the band, comes from the generic flex backends through the spec's `mask_mod`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from attnbench.impls.sliding_window import SPEC, window_mask
from attnbench.registry import register_backend
from attnbench.spec import Backend


@register_backend(SPEC, Backend.SDPA, staged=True)
def sliding_window_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                        window: int = 32) -> Callable[..., torch.Tensor]:
    """Build the `[Nq, Nk]` window mask once (setup); return `(q, k, v) -> o` running SDPA with it."""
    mask = window_mask(q.shape[-2], k.shape[-2], window=window, causal=causal, device=q.device)

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])

    return run
