"""Relative convolutional multi-head attention — "RCMHA: Relative Convolutional Multi-Head Attention
for Natural Language Modelling" (Sugiharto et al., 2023), arXiv 2308.03429. Transformer-XL relative
attention whose Q/K/V projections are each followed by a 3-tap depthwise conv over positions
(kernel shared across heads, as in the official code).
"""

from __future__ import annotations

from attnbench.impls.rmha import REL_DEFAULTS, RelativeMHA, _check, rel_flops
from attnbench.registry import register_method
from attnbench.spec import AttentionSpec, Backend, Capabilities, Paper

SPEC = AttentionSpec(
    name="rcmha",
    title="Relative convolutional multi-head attention",
    paper=Paper("RCMHA: Relative Convolutional Multi-Head Attention for Natural Language Modelling",
                2023, "2308.03429"),
    family="positional",
    kind="layer",
    defaults={**REL_DEFAULTS, "conv": True, "kernel_size": 3, "share_across_heads": True},
    capabilities=Capabilities(causal=True, noncausal=True),
    flops=rel_flops,
    check=_check,
    claims=("Next-token accuracy 0.572 vs MHA/MDHA/RMHA on char-level LM; lower memory than RMHA "
            "(the abstract's memory ranking is garbled: unverified).",),
)


@register_method(SPEC)
def rcmha(d_model: int, n_heads: int, *, backend: Backend | str = Backend.REFERENCE, causal: bool = False,
          rel_kind: str = "learned", max_len: int = 4096, init_std: float = 0.02, conv: bool = True,
          kernel_size: int = 3, share_across_heads: bool = True) -> RelativeMHA:
    """Build an RCMHA layer on `x [B, N, C]`; `conv=False` is RMHA (attention step by `backend`)."""
    return RelativeMHA(SPEC, d_model, n_heads, backend=backend, causal=causal, rel_kind=rel_kind,
                       max_len=max_len, init_std=init_std, conv=conv, kernel_size=kernel_size,
                       share_across_heads=share_across_heads)
