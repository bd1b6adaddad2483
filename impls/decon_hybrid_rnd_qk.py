"""RndEmbQK hybrid — "Deconstructing Attention" (Xue et al., 2025),
arXiv 2510.11602, Table 1's hybrid: `decon_rnd_qk` in the odd layers (1, 3, …)
and standard MHA in the even layers of the proxy models (the `layout`);
as a single layer (latency, correctness) it is `decon_rnd_qk`'s layer."""

from __future__ import annotations

from attnbench.impls._deconstructed import SourceQKAttention, hybrid_spec
from attnbench.impls.decon_rnd_qk import SPEC as BASE
from attnbench.registry import register_method
from attnbench.spec import Backend

SPEC = hybrid_spec(BASE, (
    "Input-independent Q/K in the odd layers keeps NLU near standard: FixedSeqQK hybrid 52.6 vs 51.9 (no RndEmbQK "
    "number on the card).",
))


@register_method(SPEC)
def decon_hybrid_rnd_qk(d_model: int, n_heads: int, *, backend: Backend | str = Backend.REFERENCE,
                        causal: bool = False, sigma: float = 1.0, max_len: int = 4096, seed: int = 0
                        ) -> SourceQKAttention:
    """The `decon_rnd_qk` layer on `x [B, N, C]` (attention step of `decon_rnd_qk` under `backend`)."""
    return SourceQKAttention(BASE, d_model, n_heads, backend=backend, causal=causal, source="random",
                             sigma=sigma, max_len=max_len, seed=seed)
