"""Batched STKIM pooling (`native`): top-K of every (bag, branch) row at once, the random subset by
argsort of the same noise, one scatter, one masked softmax."""

from __future__ import annotations

import torch

from attnbench.impls.acmil import MASKED_LOGIT, SPEC
from attnbench.registry import register_backend
from attnbench.spec import Backend


@register_backend(SPEC, Backend.NATIVE)
def acmil_pool_native(scores: torch.Tensor, noise: torch.Tensor | None, *, top_k: int, mask_prob: float
                      ) -> torch.Tensor:
    """Branch weights `[B, M, N]` from logits `[B, M, N]`; `noise [B, M, K]` (training) or None."""
    if noise is None or top_k <= 0 or mask_prob <= 0:
        return torch.softmax(scores, dim=-1)
    k = min(top_k, scores.shape[-1])
    top = scores.topk(k, dim=-1).indices  # [B, M, K]
    chosen = noise[..., :k].argsort(dim=-1)[..., : int(k * mask_prob)]
    masked = torch.zeros_like(scores, dtype=torch.bool).scatter(-1, top.gather(-1, chosen), True)
    return torch.softmax(scores.masked_fill(masked, MASKED_LOGIT), dim=-1)
