"""VAR — visual attention redistribution from sink tokens ("See What You Are Told", Kang et al., ICLR 2025),
arXiv 2503.03321.

In image-centric rows (visual mass `m_vis ≥ summ` and non-sink image share `m_T/m_vis ≥ rho`) every
sink token keeps `keep_frac` of its weight and the freed budget `(1−keep)·m_S` goes to the non-sink
image tokens in proportion to their weights; rows still sum to 1, text non-sink weights are unchanged.
Sinks as the paper finds them: tokens whose hidden state has a massive activation,
`max_d |x_d| / RMS(x) ≥ sink_tau` (τ = 20 in the paper; RMS over the other channels) over the sink
dimensions (`sink_dims`; None = every channel), per sequence (`detect_sinks`). In a model, `detect`
(on, the default) makes the model-level application (`suites/hallucination/apply.py`) detect them
from the hidden states entering each wrapped decoder block (the residual stream) and pass them as a
`[B, N]` mask in `sinks`; none detected ⇒ VAR leaves the layer as is.
A bare q, k, v call has no hidden states: it takes `sinks` as key indices (default token 0) or a
`[B, N]` bool mask. `except_last_layer` (official config, on) is read at model level by
`attnbench.intervene.apply_intervention`; the functional form ignores it, as it ignores `detect`.
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
              "except_last_layer": True, "detect": True, "sink_tau": 20.0, "sink_dims": None},
    capabilities=Capabilities(causal=True, noncausal=True, gqa=False),
    flops=iv.base_flops(4.0),
    check=iv.check_base,
    claims=("Training-free gains on general VL, hallucination (POPE/CHAIR) and vision-centric benchmarks "
            "for LLaVA-1.5 7B/13B (numbers not retrieved).",),
)


Sinks = list[int] | tuple[int, ...] | torch.Tensor


def detect_sinks(hidden: torch.Tensor, tau: float = 20.0, dims: list[int] | None = None) -> torch.Tensor:
    """Sink tokens `[B, N]` of hidden states `[B, N, C]`: `max_{d∈dims} |x_d| / RMS_{≠d}(x) ≥ τ` (a massive
    activation). The RMS leaves the channel out (in a 4096-wide LLM that is the paper's RMS; in a narrow
    model the plain RMS would cap the ratio at √C, below τ = 20 for C < 400)."""
    h = hidden.detach().double()
    c = h.shape[-1]
    total = h.pow(2).sum(-1, keepdim=True)
    rest = ((total - h.pow(2)).clamp_min(0) / max(c - 1, 1)).sqrt().clamp_min(1e-12)
    ratio = h.abs() / rest
    sel = ratio if dims is None else ratio[..., list(dims)]
    return sel.amax(-1) >= tau


def massive_dims(hidden: torch.Tensor, top: int = 2) -> list[int]:
    """Candidate sink dimensions: the `top` channels with the largest |activation| relative to RMS."""
    rms = hidden.float().pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)
    return (hidden.float().abs() / rms).flatten(0, -2).amax(0).topk(top).indices.tolist()


def sets(n: int, img_span: list[int] | None, sinks: Sinks, device: torch.device | str
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Key masks: image tokens `[N]`, sink tokens and non-sink image tokens (`[N]`, or `[B, N]` for a mask)."""
    img = iv.img_mask(img_span, n, device)
    if isinstance(sinks, torch.Tensor) and sinks.dtype == torch.bool:
        sink = sinks.to(device)
    else:
        sink = iv.index_mask([int(i) for i in sinks], n, device)
    return img, sink, img & ~sink


def _keys(mask: torch.Tensor) -> torch.Tensor:
    """A key mask `[N]` or `[B, N]` broadcast against `P [B, H, Nq, Nk]`."""
    return mask[:, None, None, :] if mask.dim() == 2 else mask


def selected_rows(m_vis: torch.Tensor, m_t: torch.Tensor, summ: float, rho: float) -> torch.Tensor:
    """Image-centric rows `[B, H, Nq]`: enough visual mass, mostly on non-sink image tokens."""
    return (m_vis >= summ) & (m_t >= rho * m_vis) & (m_t > 0)


@register_method(SPEC)
def var(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, base: str = "mha",
        base_params: Params = MappingProxyType({}), keep_frac: float = 0.6, sinks: Sinks = (0,), summ: float = 0.2,
        rho: float = 0.5, img_span: list[int] | None = None, except_last_layer: bool = True, detect: bool = True,
        sink_tau: float = 20.0, sink_dims: list[int] | None = None) -> torch.Tensor:
    """Reference: edit the materialised `P [B, H, N, N]` row by row, then `P' v`."""
    p = iv.probs(q, k, causal, {"base": base, "base_params": base_params})
    img, sink, nsimg = sets(k.shape[-2], img_span, sinks, q.device)
    sink, nsimg = _keys(sink), _keys(nsimg)
    m_s, m_t = (p * sink).sum(-1), (p * nsimg).sum(-1)
    sel = selected_rows(p[..., img].sum(-1), m_t, summ, rho)[..., None]
    gain_t = 1 + (1 - keep_frac) * m_s / m_t.clamp_min(torch.finfo(p.dtype).tiny)
    scale = torch.where(sink, torch.full_like(p, keep_frac), torch.where(nsimg, gain_t[..., None], 1.0))
    p = torch.where(sel, p * scale, p)
    return (p @ v.to(p.dtype)).to(q.dtype)
