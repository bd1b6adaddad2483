"""StaticEmbQK hybrid — "Deconstructing Attention" (Xue et al., 2025),
arXiv 2510.11602, Table 1's hybrid: `decon_static_qk` in the odd layers (1, 3, …)
and standard MHA in the even layers of the proxy models (the `layout`);
as a single layer (latency, correctness) it is `decon_static_qk`'s layer."""

from __future__ import annotations

from attnbench.impls._deconstructed import SourceQKAttention, hybrid_spec
from attnbench.impls.decon_static_qk import SPEC as BASE
from attnbench.registry import register_method
from attnbench.spec import Backend

SPEC = hybrid_spec(BASE, (
    "500M hybrid: NLU 51.8 / WikiText PPL 38.7 vs standard 51.9 / 38.1 (uniform: 49.4 / 79.9).",
))


@register_method(SPEC)
def decon_hybrid_static_qk(d_model: int, n_heads: int, *, backend: Backend | str = Backend.REFERENCE,
                           causal: bool = False) -> SourceQKAttention:
    """The `decon_static_qk` layer on `x [B, N, C]` (attention step of `decon_static_qk` under `backend`)."""
    return SourceQKAttention(BASE, d_model, n_heads, backend=backend, causal=causal, source="static")
