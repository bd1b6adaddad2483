"""Approximate-attention hybrid — "Deconstructing Attention" (Xue et al., 2025),
arXiv 2510.11602, Table 1's hybrid: `decon_approx` in the odd layers (1, 3, …)
and standard MHA in the even layers of the proxy models (the `layout`);
as a single layer (latency, correctness) it is `decon_approx`'s layer."""

from __future__ import annotations

import torch

from attnbench.impls._deconstructed import hybrid_spec
from attnbench.impls.decon_approx import SPEC as BASE
from attnbench.impls.decon_approx import decon_approx
from attnbench.registry import register_method

SPEC = hybrid_spec(BASE, (
    "Uniform Taylor attention: NLU 50.2 / WikiText PPL 47.9 vs standard 51.9 / 38.1; the card gives no hybrid "
    "number (the paper: hybrids close the gap).",
))


@register_method(SPEC)
def decon_hybrid_approx(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
    """The `decon_approx` reference on `[B, H, N, D]`."""
    return decon_approx(q, k, v, causal=causal)
