"""MEDUSA's gating step in one gather: every scale's logits are brought to the grid by precomputed
cell indices (`⌊i/s⌋, ⌊j/s⌋`) into one `[S, B, C, N]` tensor, then sigmoid, mean and product, in
place of S repeat-and-crop upsamplings."""

from __future__ import annotations

import torch

from attnbench.impls.medusa import SPEC
from attnbench.registry import register_backend
from attnbench.spec import Backend


@register_backend(SPEC, Backend.NATIVE)
def gate_features_native(x: torch.Tensor, logits: list[torch.Tensor], scales: tuple[int, ...]) -> torch.Tensor:
    """x `[B, C, h, w]`, logits per scale s `[B, C, ⌈h/s⌉, ⌈w/s⌉]` → `x ⊙ mean_s up_s(σ(logit_s))`."""
    b, c, h, w = x.shape
    gathered = []
    for g, s in zip(logits, scales, strict=True):
        rows = torch.arange(h, device=x.device) // s
        cols = torch.arange(w, device=x.device) // s
        flat = (rows[:, None] * g.shape[-1] + cols[None, :]).reshape(-1)
        gathered.append(g.flatten(2).index_select(2, flat))
    gate = torch.sigmoid(torch.stack(gathered)).mean(0)
    return (x.flatten(2) * gate).view(b, c, h, w)
