"""Compressed Convolutional Grouped-Query Attention (CCGQA) — Zyphra, arXiv 2510.04476.

CCA (see `cca`) with kv-head sharing in the latent: `groups` latent query heads read one kv head.
ZAYA1 uses 8 latent query heads and 2 kv heads (groups = 4); the default here is 2 so that the
small generic workloads (4 heads, C = 2) stay valid.
"""

from __future__ import annotations

from attnbench.impls.cca import CCAttention, make_spec
from attnbench.registry import register_method
from attnbench.spec import Backend

SPEC = make_spec("ccgqa", "Compressed convolutional grouped-query attention", groups=2)


@register_method(SPEC)
def ccgqa(d_model: int, n_heads: int, *, backend: Backend | str, causal: bool = False, compression: int = 2,
          groups: int = 2, kernel_dw: int = 2, kernel_grouped: int = 2, convs: bool = True,
          mean_residual: bool = True, value_shift: bool = True, qk_norm: bool = True,
          rope: bool = False) -> CCAttention:
    """Build a CCGQA layer: CCA whose latent kv heads are each shared by `groups` query heads."""
    return CCAttention(SPEC, d_model, n_heads, backend=backend, causal=causal, compression=compression,
                       groups=groups, kernel_dw=kernel_dw, kernel_grouped=kernel_grouped, convs=convs,
                       mean_residual=mean_residual, value_shift=value_shift, qk_norm=qk_norm, rope=rope)
