"""StaticEmbQK — "Deconstructing Attention" (Xue et al., 2025), arXiv 2510.11602. Queries and keys
from the input token embeddings (bound with `set_qk_source`), values from the layer input."""

from __future__ import annotations

from attnbench.impls._deconstructed import PAPER, SourceQKAttention, source_qk_flops
from attnbench.registry import register_method
from attnbench.spec import AttentionSpec, Backend, Capabilities

SPEC = AttentionSpec(
    name="decon_static_qk",
    title="Deconstructed attention: static-embedding Q/K (StaticEmbQK)",
    paper=PAPER,
    family="deconstructed",
    kind="layer",
    capabilities=Capabilities(causal=True, noncausal=True),
    flops=source_qk_flops(batch_one=False),
    claims=("500M uniform: NLU 49.4 / WikiText PPL 79.9; hybrid: 51.8 / 38.7 (standard 51.9 / 38.1).",),
)


@register_method(SPEC)
def decon_static_qk(d_model: int, n_heads: int, *, backend: Backend | str = Backend.REFERENCE,
                    causal: bool = False) -> SourceQKAttention:
    """Build the layer on `x [B, N, C]`; bind the embeddings with `layer.set_qk_source(e)` each batch."""
    return SourceQKAttention(SPEC, d_model, n_heads, backend=backend, causal=causal, source="static")
