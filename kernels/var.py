"""VAR fused: four FlexAttention calls with LSE (all keys, sinks, non-sink image, image); identity 3
(`Σ_{j∈S} P_ij v_j = exp(lse_S − lse_all)·O_S`) gives `O' = O + sel·(1−keep)·m_S·(O_T − O_S)` exactly,
without materialising P. Sinks given as a `[B, N]` mask restrict the flex calls per batch element."""

from __future__ import annotations

from types import MappingProxyType

import torch

from attnbench import intervene as iv
from attnbench.impls.var import SPEC, Sinks, selected_rows, sets
from attnbench.ops import flex_can_run
from attnbench.registry import register_backend
from attnbench.spec import Backend, Params


@register_backend(SPEC, Backend.FLEX, can_run=flex_can_run)
def var_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, base: str = "mha",
             base_params: Params = MappingProxyType({}), keep_frac: float = 0.6, sinks: Sinks = (0,),
             summ: float = 0.2, rho: float = 0.5, img_span: list[int] | None = None,
             except_last_layer: bool = True, detect: bool = True, sink_tau: float = 20.0,
             sink_dims: list[int] | None = None) -> torch.Tensor:
    """Masses from restricted-flex LSEs; partial outputs recombined (identity 3)."""
    params = {"base": base, "base_params": base_params}
    img, sink, nsimg = sets(k.shape[-2], img_span, sinks, q.device)
    o, lse = iv.flex(q, k, v, causal, params)
    o_s, lse_s = iv.flex(q, k, v, causal, params, keep=sink)
    o_t, lse_t = iv.flex(q, k, v, causal, params, keep=nsimg)
    _, lse_i = iv.flex(q, k, v, causal, params, keep=img)
    m_s, m_t, m_vis = iv.mass(lse_s, lse), iv.mass(lse_t, lse), iv.mass(lse_i, lse)
    sel = selected_rows(m_vis, m_t, summ, rho)
    w = torch.where(sel, (1 - keep_frac) * m_s, 0.0)[..., None].to(o.dtype)
    return o + w * (o_t - o_s)
