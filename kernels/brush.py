"""In-Context Brush fused: three FlexAttention calls with LSE (all keys, demo keys, text keys); identity 3
gives the boosts `A_{tgt,S} V_S = exp(lse_S − lse_all)·O_S` and the head score `Σ_q exp(lse_text − lse_all)`."""

from __future__ import annotations

from types import MappingProxyType

import torch

from attnbench import intervene as iv
from attnbench.impls.brush import SPEC, combine, head_gain, spans
from attnbench.ops import flex_can_run
from attnbench.registry import register_backend
from attnbench.spec import Backend, Params


@register_backend(SPEC, Backend.FLEX, can_run=flex_can_run)
def brush_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, base: str = "mha",
               base_params: Params = MappingProxyType({}), lam: float = 0.3, gamma: float = 0.2,
               text_span: list[int] | None = None, demo_span: list[int] | None = None,
               target_span: list[int] | None = None) -> torch.Tensor:
    params = {"base": base, "base_params": base_params}
    text, demo, tgt = spans(k.shape[-2], text_span, demo_span, target_span, q.device)
    o, lse = iv.flex(q, k, v, causal, params)
    o_d, lse_d = iv.flex(q, k, v, causal, params, keep=demo)
    o_t, lse_t = iv.flex(q, k, v, causal, params, keep=text)
    m_d, m_t = iv.mass(lse_d, lse), iv.mass(lse_t, lse)
    shift = lam * (m_d[..., None].to(o.dtype) * o_d + m_t[..., None].to(o.dtype) * o_t)
    return combine(o, shift, head_gain(m_t, tgt, gamma), tgt)
