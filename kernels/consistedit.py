"""ConsistEdit fused: a pure qkv_mod before the base's fused backend (SDPA for mha)."""

from __future__ import annotations

from types import MappingProxyType

import torch

from attnbench import intervene as iv
from attnbench.impls.consistedit import SPEC, edit_qkv
from attnbench.registry import register_backend
from attnbench.spec import Backend, Params


@register_backend(SPEC, Backend.SDPA)
def consistedit_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                     base: str = "mha", base_params: Params = MappingProxyType({}), strength: float = 1.0,
                     qk_structure: bool = True, img_span: list[int] | None = None,
                     edit_span: list[int] | None = None) -> torch.Tensor:
    q, k, v = edit_qkv(q, k, v, strength, qk_structure, img_span, edit_span)
    return iv.base_out(q, k, v, causal, {"base": base, "base_params": base_params}, fused=True)
