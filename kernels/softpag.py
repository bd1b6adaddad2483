"""SoftPAG fused: `O' = (1−u)·base(q, k, v) + u·v` per selected head (exact; no probabilities). `guidance` is
read at model level (`attnbench.intervene.Guided`)."""

from __future__ import annotations

from types import MappingProxyType

import torch

from attnbench import intervene as iv
from attnbench.impls.softpag import SPEC
from attnbench.registry import register_backend
from attnbench.spec import Backend, Params


@register_backend(SPEC, Backend.SDPA)
def softpag_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, base: str = "mha",
                 base_params: Params = MappingProxyType({}), strength: float = 0.5,
                 heads: list[int] | None = None, guidance: float = 3.0) -> torch.Tensor:
    """The base's fastest fused backend (SDPA for mha), then the per-head blend with v."""
    o = iv.base_out(q, k, v, causal, {"base": base, "base_params": base_params}, fused=True)
    u = (iv.head_mask(heads, q.shape[1], q.device).to(o.dtype) * strength)[None, :, None, None]
    return (1 - u) * o + u * v
