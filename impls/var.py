"""VAR — visual attention redistribution from sink tokens ("See What You Are Told", Kang et al., ICLR 2025),
arXiv 2503.03321.

In image-centric rows (visual mass `m_vis ≥ summ` and non-sink image share `m_T/m_vis ≥ rho`) every
sink token keeps `keep_frac` of its weight and the freed budget `(1−keep)·m_S` goes to the non-sink
image tokens in proportion to their weights; rows still sum to 1, text non-sink weights are unchanged.
Sinks are key indices (`sinks`, default token 0); detecting them from hidden-state massive
activations is `attnbench.analysis.sink_tokens`. `except_last_layer` (official config, on) is read at
model level by `attnbench.intervene.apply_intervention`; the functional form ignores it.
"""

from __future__ import annotations

from types import MappingProxyType

import torch

from attnbench import intervene as iv
from attnbench.registry import register_method
from attnbench.spec import AttentionSpec, Capabilities, Paper, Params

SPEC = AttentionSpec(
    name="var",
    title="VAR: visual attention sink redistribution",
    paper=Paper("See What You Are Told: Visual Attention Sink in Large Multimodal Models", 2025, "2503.03321"),
    family="intervention",
    wraps_base=True,
    defaults={**iv.COMMON_DEFAULTS, "keep_frac": 0.6, "sinks": [0], "summ": 0.2, "rho": 0.5, "img_span": None,
              "except_last_layer": True},
    capabilities=Capabilities(causal=True, noncausal=True, gqa=False),
    flops=iv.base_flops(4.0),
    check=iv.check_base,
    claims=("Training-free gains on general VL, hallucination (POPE/CHAIR) and vision-centric benchmarks "
            "for LLaVA-1.5 7B/13B (numbers not retrieved).",),
)


def sets(n: int, img_span: list[int] | None, sinks: list[int], device: torch.device | str
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Key masks `[N]`: image tokens, sink tokens, non-sink image tokens."""
    img = iv.img_mask(img_span, n, device)
    sink = iv.index_mask(sinks, n, device)
    return img, sink, img & ~sink


def selected_rows(m_vis: torch.Tensor, m_t: torch.Tensor, summ: float, rho: float) -> torch.Tensor:
    """Image-centric rows `[B, H, Nq]`: enough visual mass, mostly on non-sink image tokens."""
    return (m_vis >= summ) & (m_t >= rho * m_vis) & (m_t > 0)


@register_method(SPEC)
def var(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, base: str = "mha",
        base_params: Params = MappingProxyType({}), keep_frac: float = 0.6, sinks: list[int] = (0,), summ: float = 0.2,
        rho: float = 0.5, img_span: list[int] | None = None,
        except_last_layer: bool = True) -> torch.Tensor:
    """Reference: edit the materialised `P [B, H, N, N]` row by row, then `P' v`."""
    p = iv.probs(q, k, causal, {"base": base, "base_params": base_params})
    img, sink, nsimg = sets(k.shape[-2], img_span, list(sinks), q.device)
    m_s, m_t = p[..., sink].sum(-1), p[..., nsimg].sum(-1)
    sel = selected_rows(p[..., img].sum(-1), m_t, summ, rho)[..., None]
    gain_t = 1 + (1 - keep_frac) * m_s / m_t.clamp_min(torch.finfo(p.dtype).tiny)
    scale = torch.where(sink, torch.full_like(p, keep_frac), torch.where(nsimg, gain_t[..., None], 1.0))
    p = torch.where(sel, p * scale, p)
    return (p @ v.to(p.dtype)).to(q.dtype)
