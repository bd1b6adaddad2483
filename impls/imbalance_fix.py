"""Fixing imbalanced attention (Arif et al., 2025): dual-stream image-token selection and
head-specific modulation of the last query row's logits, arXiv 2501.12206.

Last query row only: `s_j ← s_j + α_h·|s_j|` on "top" image tokens and `+ β·|s_j|` on "bottom"
ones, then softmax (PAI-style). Token streams: top = the `top_frac` image tokens with the most
attention, bottom = image tokens whose attention is an outlier (> Q3 + 1.5·IQR), top −= bottom. As
the paper applies it (model level, `suites/hallucination/apply.py`): the attention is the image
encoder's CLS attention (its layers 1 and L−1, heads summed), passed in `stream_scores` `[B, N_img]`,
and only the decoder layers `layer_range` are edited (None = every layer). A bare q, k, v call has no
encoder: with `stream_scores` None the streams come from the base's own last-row attention (summed
over heads). Head modulation (absent from the released code, spec [unverified]):
`α_h = α·minmax_h(visual mass of head h)`.
"""

from __future__ import annotations

import math
from types import MappingProxyType

import torch

from attnbench import intervene as iv
from attnbench.registry import register_method
from attnbench.spec import AttentionSpec, Capabilities, Paper, Params

SPEC = AttentionSpec(
    name="imbalance_fix",
    title="Fixing imbalanced attention: dual-stream tokens + head modulation",
    paper=Paper("Fixing Imbalanced Attention to Mitigate In-Context Hallucination of LVLMs", 2025, "2501.12206"),
    family="intervention",
    wraps_base=True,
    defaults={**iv.COMMON_DEFAULTS, "alpha": 0.7, "beta": 0.3, "top_frac": 0.25, "head_modulation": True,
              "img_span": None, "stream_scores": None, "layer_range": None},
    capabilities=Capabilities(causal=True, noncausal=True, gqa=False),
    flops=iv.base_flops(1.0),
    check=iv.check_base,
    claims=("Up to 62.3% fewer hallucinations (MSCOCO / CHAIR) at comparable task quality.",),
)


def streams(p_last: torch.Tensor, img: torch.Tensor, top_frac: float, alpha: float, head_modulation: bool,
            stream_scores: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From the last row's probabilities `[B, H, Nk]` (and the encoder's image-token scores `[B, N_img]` when
    given): top `[B, Nk]`, bottom `[B, Nk]` (0/1), α_h `[B, H]`."""
    score = p_last.sum(1).double()  # [B, Nk], summed over heads
    if stream_scores is not None:
        score = torch.zeros_like(score)
        score[:, img] = stream_scores.to(score.device, score.dtype)
    n_img = int(img.sum())
    if n_img == 0:
        z = torch.zeros_like(score)
        return z, z, torch.zeros(p_last.shape[:2], dtype=torch.float64, device=p_last.device)
    img_score = score[:, img]
    q1, q3 = img_score.quantile(0.25, dim=-1, keepdim=True), img_score.quantile(0.75, dim=-1, keepdim=True)
    bottom = torch.zeros_like(score, dtype=torch.bool)
    bottom[:, img] = img_score > q3 + 1.5 * (q3 - q1)
    k = max(1, math.ceil(top_frac * n_img))
    top_idx = img.nonzero()[:, 0][img_score.topk(k, dim=-1).indices]
    top = torch.zeros_like(bottom).scatter(1, top_idx, True) & ~bottom
    m_vis = p_last[..., img].sum(-1).double()  # [B, H]
    a_h = alpha * iv.minmax(m_vis, -1, flat=1.0) if head_modulation else torch.full_like(m_vis, alpha)
    return top.double(), bottom.double(), a_h


def edit_last_row(s: torch.Tensor, top: torch.Tensor, bottom: torch.Tensor, a_h: torch.Tensor,
                  beta: float) -> torch.Tensor:
    """Logits `[B, H, N, Nk]` with the last row boosted: `s + (α_h·top + β·bottom)·|s|` (finite entries)."""
    gain = (a_h[..., None] * top[:, None] + beta * bottom[:, None]).to(s.dtype)  # [B, H, Nk]
    last = s[:, :, -1]
    last = torch.where(torch.isfinite(last), last + gain * last.abs(), last)
    return torch.cat([s[:, :, :-1], last[:, :, None]], dim=2)


@register_method(SPEC)
def imbalance_fix(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, base: str = "mha",
                  base_params: Params = MappingProxyType({}), alpha: float = 0.7, beta: float = 0.3,
                  top_frac: float = 0.25, head_modulation: bool = True,
                  img_span: list[int] | None = None, stream_scores: torch.Tensor | None = None,
                  layer_range: list[int] | None = None) -> torch.Tensor:
    """Reference: materialised logits, last row edited, softmax, `P v`."""
    s = iv.logits(q, k, causal, {"base": base, "base_params": base_params})
    img = iv.img_mask(img_span, k.shape[-2], q.device)
    top, bottom, a_h = streams(iv.softmax0(s)[:, :, -1], img, top_frac, alpha, head_modulation, stream_scores)
    p = iv.softmax0(edit_last_row(s, top, bottom, a_h, beta))
    return (p @ v.to(p.dtype)).to(q.dtype)
