"""SoftPAG — soft perturbed-attention guidance on selected heads (HeadHunter, Ahn et al. 2025), arXiv 2506.10978.

In the selected heads the attention map is interpolated toward the identity, `A' = (1−u)A + uI`
(u = 1 is PAG's identity map: every token attends to itself, output = v). The perturbed model is the
"weak" model of guidance: the paper decodes with `(1+w)·out_orig − w·out_perturbed`, two model
forwards combined at model level (`guidance` = w, read by `attnbench.intervene.Guided`; the functional
form here is the perturbation only). HeadHunter's greedy head search is
`suites/hallucination/analysis.head_hunter`.
"""

from __future__ import annotations

from types import MappingProxyType

import torch

from attnbench import intervene as iv
from attnbench.registry import register_method
from attnbench.spec import AttentionSpec, Capabilities, Paper, Params

SPEC = AttentionSpec(
    name="softpag",
    title="SoftPAG (attention map interpolated toward identity, per head)",
    paper=Paper("Fine-Grained Perturbation Guidance via Attention Head Selection", 2025, "2506.10978"),
    family="intervention",
    wraps_base=True,
    defaults={**iv.COMMON_DEFAULTS, "strength": 0.5, "heads": None, "guidance": 3.0},
    capabilities=Capabilities(causal=True, noncausal=True, gqa=False),
    flops=iv.base_flops(1.0),
    check=iv.check_base,
    claims=("SD3: the top 6 of 24 heads beat the best layer-level PAG in FID.",
            "Style prompts: HeadHunter(3.0) PickScore 20.70 / AES 5.92 vs baseline 19.66 / 5.37."),
)


def pag_guidance(eps_orig: torch.Tensor, eps_perturbed: torch.Tensor, scale: float) -> torch.Tensor:
    """PAG guidance `(1+w)·ε_orig − w·ε_perturbed` (w = 0: unguided)."""
    return (1 + scale) * eps_orig - scale * eps_perturbed


def _gate(q: torch.Tensor, strength: float, heads: list[int] | None) -> torch.Tensor:
    """Per-head u as `[1, H, 1, 1]` (0 on unselected heads)."""
    return (iv.head_mask(heads, q.shape[1], q.device).to(torch.float64) * strength)[None, :, None, None]


@register_method(SPEC)
def softpag(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, base: str = "mha",
            base_params: Params = MappingProxyType({}), strength: float = 0.5,
            heads: list[int] | None = None, guidance: float = 3.0) -> torch.Tensor:
    """Reference: materialise the base's `P [B, H, N, N]`, mix with the identity, multiply by v."""
    p = iv.probs(q, k, causal, {"base": base, "base_params": base_params})
    u = _gate(q, strength, heads).to(p.dtype)
    eye = torch.eye(q.shape[-2], k.shape[-2], dtype=p.dtype, device=p.device)
    return (((1 - u) * p + u * eye) @ v.to(p.dtype)).to(q.dtype)
