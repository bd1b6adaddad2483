"""VHR fused: the base's fused backend (SDPA for mha) for the image branch; the image-free branch is
needed at the last query row only (one row, O(N·D) per head; or `noimg_last` from the model's image-free
forward); head scaling is free."""

from __future__ import annotations

from types import MappingProxyType

import torch

from attnbench import intervene as iv
from attnbench.impls.vhr import SPEC, last_noimg, reinforce
from attnbench.registry import register_backend
from attnbench.spec import Backend, Params


@register_backend(SPEC, Backend.SDPA)
def vhr_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, base: str = "mha",
             base_params: Params = MappingProxyType({}), alpha: float = 2.0, outlier_z: float = 1.0,
             img_span: list[int] | None = None, noimg_last: torch.Tensor | None = None) -> torch.Tensor:
    params = {"base": base, "base_params": base_params}
    o = iv.base_out(q, k, v, causal, params, fused=True)
    if noimg_last is None:
        noimg_last = last_noimg(q, k, v, causal, params, iv.img_mask(img_span, k.shape[-2], q.device))
    return reinforce(o, noimg_last.to(o.dtype), alpha, outlier_z)
