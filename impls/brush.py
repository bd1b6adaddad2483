"""In-Context Brush — intra-head latent feature shifting and inter-head reweighting (Xu et al., 2025),
arXiv 2505.20271.

Sequence layout `[text | demo (subject) image | target image]` (spans; defaults: the first quarter is
text, the second the demo, the second half the target). For target-image queries:
`O ← O + λ·(A_{tgt,demo} V_demo + A_{tgt,text} V_text)` with A normalised over all keys (an
un-renormalised boost), then `O_h ← O_h·(1 + γ·minmax_h(Σ_{q∈tgt, k∈text} A))`. Non-target rows
are unchanged. Not evaluated on the hallucination proxy (Shapes-VLM): Brush inserts a subject from a
demo image into a target image (a diptych in a diffusion transformer), and the proxy has no such
pair, so splitting its patches into "demo" and "target" halves would mean nothing; the suite records
that reason.
"""

from __future__ import annotations

from types import MappingProxyType

import torch

from attnbench import intervene as iv
from attnbench.registry import register_method
from attnbench.spec import AttentionSpec, Capabilities, Paper, Params

SPEC = AttentionSpec(
    name="brush",
    title="In-Context Brush: latent feature shifting + inter-head reweighting",
    paper=Paper("In-Context Brush: Zero-shot Customized Subject Insertion with Context-Aware Latent Space "
                "Manipulation", 2025, "2505.20271"),
    family="intervention",
    wraps_base=True,
    defaults={**iv.COMMON_DEFAULTS, "lam": 0.3, "gamma": 0.2, "text_span": None, "demo_span": None,
              "target_span": None},
    capabilities=Capabilities(causal=True, noncausal=True, gqa=False),
    flops=iv.base_flops(3.0),
    check=iv.check_base,
    claims=("Better identity preservation, text alignment and image quality than prior zero-shot subject "
            "insertion (qualitative and metric comparisons; FLUX.1-Fill).",),
)


def spans(n: int, text_span: list[int] | None, demo_span: list[int] | None, target_span: list[int] | None,
          device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token masks `[N]`: text, demo image, target image."""
    return (iv.span_mask(text_span, n, (0.0, 0.25), device), iv.span_mask(demo_span, n, (0.25, 0.5), device),
            iv.span_mask(target_span, n, (0.5, 1.0), device))


def head_gain(m_text: torch.Tensor, tgt: torch.Tensor, gamma: float) -> torch.Tensor:
    """`1 + γ·minmax_h(Σ_{q∈tgt} m_text)` as `[B, H, 1, 1]` from per-row text masses `[B, H, Nq]`."""
    score = (m_text * tgt).sum(-1)
    return (1 + gamma * iv.minmax(score.double(), -1))[..., None, None]


def combine(o: torch.Tensor, shift: torch.Tensor, gain: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Target rows: `(O + shift)·gain`; other rows: O."""
    edited = (o + shift) * gain.to(o.dtype)
    return torch.where(tgt[:, None], edited, o)


@register_method(SPEC)
def brush(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, base: str = "mha",
          base_params: Params = MappingProxyType({}), lam: float = 0.3, gamma: float = 0.2,
          text_span: list[int] | None = None, demo_span: list[int] | None = None,
          target_span: list[int] | None = None) -> torch.Tensor:
    """Reference: partial products `A_{tgt,S} V_S` from the materialised P."""
    p = iv.probs(q, k, causal, {"base": base, "base_params": base_params})
    text, demo, tgt = spans(k.shape[-2], text_span, demo_span, target_span, q.device)
    vv = v.to(p.dtype)
    o = p @ vv
    shift = lam * ((p * demo) @ vv + (p * text) @ vv)
    return combine(o, shift, head_gain(p[..., text].sum(-1), tgt, gamma), tgt).to(q.dtype)
