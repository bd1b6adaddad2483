"""Non-approximate (query-independent) hybrid — "Deconstructing Attention" (Xue et al., 2025),
arXiv 2510.11602, Table 1's hybrid: `decon_nonapprox` in the odd layers (1, 3, …)
and standard MHA in the even layers of the proxy models (the `layout`);
as a single layer (latency, correctness) it is `decon_nonapprox`'s layer."""

from __future__ import annotations

import torch

from attnbench.impls._deconstructed import hybrid_spec
from attnbench.impls.decon_nonapprox import SPEC as BASE
from attnbench.impls.decon_nonapprox import decon_nonapprox
from attnbench.registry import register_method

SPEC = hybrid_spec(BASE, (
    "500M hybrid: NLU 52.9 / WikiText PPL 39.4, above standard's 51.9 on NLU (uniform: 39.3 ≈ random 39.9).",
))


@register_method(SPEC)
def decon_hybrid_nonapprox(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
    """The `decon_nonapprox` reference on `[B, H, N, D]`."""
    return decon_nonapprox(q, k, v, causal=causal)
