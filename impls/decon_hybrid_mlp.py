"""MLP (no mixing) hybrid — "Deconstructing Attention" (Xue et al., 2025),
arXiv 2510.11602, Table 1's hybrid: `decon_mlp` in the odd layers (1, 3, …)
and standard MHA in the even layers of the proxy models (the `layout`);
as a single layer (latency, correctness) it is `decon_mlp`'s layer."""

from __future__ import annotations

from attnbench.impls._deconstructed import hybrid_spec
from attnbench.impls.decon_mlp import SPEC as BASE
from attnbench.impls.decon_mlp import GatedMLP
from attnbench.registry import register_method
from attnbench.spec import Backend

SPEC = hybrid_spec(BASE, (
    "Uniform MLP: NLU 40.0 / PPL 993.5; the card gives no hybrid number (the paper: interleaved standard layers "
    "rescue failing variants).",
))


@register_method(SPEC)
def decon_hybrid_mlp(d_model: int, n_heads: int, *, backend: Backend | str = Backend.REFERENCE, causal: bool = False,
              hidden: int = 0) -> GatedMLP:
    """The `decon_mlp` layer (parameter-matched gated MLP) on `x [B, N, C]`."""
    return GatedMLP(d_model, backend=backend, hidden=hidden)
