"""RndEmbQK — "Deconstructing Attention" (Xue et al., 2025), arXiv 2510.11602. Queries and keys from
fixed random noise instead of the layer input (values from the input): an input-independent map."""

from __future__ import annotations

from attnbench.impls._deconstructed import PAPER, SourceQKAttention, source_qk_flops
from attnbench.registry import register_method
from attnbench.spec import AttentionSpec, Backend, Capabilities

SPEC = AttentionSpec(
    name="decon_rnd_qk",
    title="Deconstructed attention: random-embedding Q/K (RndEmbQK)",
    paper=PAPER,
    family="deconstructed",
    kind="layer",
    defaults={"sigma": 1.0, "max_len": 4096, "seed": 0},
    capabilities=Capabilities(causal=True, noncausal=True),
    flops=source_qk_flops(batch_one=True),
    check=lambda w, p: f"N={w.seq_q} exceeds max_len={p['max_len']}" if w.seq_q > p["max_len"] else None,
    claims=("Input-independent Q/K in a hybrid (odd layers) keeps NLU near standard: FixedSeqQK 52.6 vs "
            "51.9 at 500M (the card gives no RndEmbQK number).",),
)


@register_method(SPEC)
def decon_rnd_qk(d_model: int, n_heads: int, *, backend: Backend | str = Backend.REFERENCE,
                 causal: bool = False, sigma: float = 1.0, max_len: int = 4096, seed: int = 0
                 ) -> SourceQKAttention:
    """Build the layer on `x [B, N, C]`; Q/K from a fixed `N(0, σ²)` buffer (attention step by `backend`)."""
    return SourceQKAttention(SPEC, d_model, n_heads, backend=backend, causal=causal, source="random",
                             sigma=sigma, max_len=max_len, seed=seed)
