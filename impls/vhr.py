"""VHR — vision-aware head reinforcement (He et al., ACL 2025, "Cracking the Code of Hallucination in
LVLMs with Vision-aware Head Divergence"), arXiv 2412.13949.

VHD per head = L2 distance between the head output at the last position with and without the
image. As the paper computes it (true VHD): a second forward of the model without the image tokens,
whose per-layer head outputs at the last position the model-level application
(`suites/hallucination/apply.py`) passes in `noimg_last` `[B, H, D]`; T-VHD (per generated token) is
the sum of VHD over every head of every layer. A bare q, k, v call has no second forward: with
`noimg_last` None it uses the per-layer stand-in (the same layer with image keys masked out). Heads
with `VHD > mean + z·std` of the layer are outliers and dropped; the rest above the layer median are
multiplied by `alpha`. Stacking vhr layers re-computes VHD after the earlier layers were reinforced,
as the paper does layer by layer.
"""

from __future__ import annotations

from types import MappingProxyType

import torch

from attnbench import intervene as iv
from attnbench.registry import register_method
from attnbench.spec import AttentionSpec, Capabilities, Paper, Params

SPEC = AttentionSpec(
    name="vhr",
    title="VHR: vision-aware head reinforcement",
    paper=Paper("Cracking the Code of Hallucination in LVLMs with Vision-aware Head Divergence", 2025,
                "2412.13949"),
    family="intervention",
    wraps_base=True,
    defaults={**iv.COMMON_DEFAULTS, "alpha": 2.0, "outlier_z": 1.0, "img_span": None, "noimg_last": None},
    capabilities=Capabilities(causal=True, noncausal=True, gqa=False),
    flops=iv.base_flops(1.0),
    check=iv.check_base,
    claims=("LLaVA-1.5: CHAIR_S / CHAIR_I reduced by up to 16.36 / 4.61; also InstructBLIP, LLaVA-NeXT, "
            "POPE; negligible latency overhead.",),
)


def vhd(o_img: torch.Tensor, o_noimg: torch.Tensor) -> torch.Tensor:
    """Vision-aware head divergence `[..., H]` from head outputs `[..., H, D]` (L2 over D)."""
    return (o_img.double() - o_noimg.double()).norm(dim=-1)


def select_heads(score: torch.Tensor, z: float = 1.0) -> torch.Tensor:
    """Bool `[..., H]`: above the median over heads and not an outlier (`> mean + z·std`)."""
    mean, std = score.mean(-1, keepdim=True), score.std(-1, unbiased=False, keepdim=True)
    outlier = score - mean > z * std * (1 + 1e-6) + 1e-12  # margin: the top of two heads sits at mean+std
    median = score.quantile(0.5, dim=-1, keepdim=True)
    return (score > median) & ~outlier


def last_noimg(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, params: dict,
               img: torch.Tensor) -> torch.Tensor:
    """Head outputs of the last query row with image keys removed, `[B, H, D]` (O(N·D) per head)."""
    n = q.shape[-2]
    p = iv.probs(q[:, :, -1:], k, causal, params, keep=~img, q_offset=n - 1)
    return (p @ v.to(p.dtype))[:, :, 0]


def t_vhd(vhd_lh: torch.Tensor) -> torch.Tensor:
    """T-VHD: the sum of VHD over layers and heads (`[..., L, H]` → `[...]`)."""
    return vhd_lh.sum((-1, -2))


def reinforce(o: torch.Tensor, o_last_noimg: torch.Tensor, alpha: float, z: float) -> torch.Tensor:
    """Scale the selected heads of `o [B, H, N, D]` by alpha (VHD from its last row)."""
    score = vhd(o[:, :, -1], o_last_noimg)
    score = torch.where(score > 1e-6 * o[:, :, -1].double().norm(dim=-1), score, 0.0)  # rounding-level VHD is 0
    sel = select_heads(score, z) & (score > 0)
    gain = 1 + (alpha - 1) * sel.to(o.dtype)
    return o * gain[..., None, None]


@register_method(SPEC)
def vhr(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, base: str = "mha",
        base_params: Params = MappingProxyType({}), alpha: float = 2.0, outlier_z: float = 1.0,
        img_span: list[int] | None = None, noimg_last: torch.Tensor | None = None) -> torch.Tensor:
    """Reference: both branches from materialised probabilities (or `noimg_last` from the model's image-free
    forward), then per-head scaling."""
    params = {"base": base, "base_params": base_params}
    p = iv.probs(q, k, causal, params)
    o = p @ v.to(p.dtype)
    if noimg_last is None:
        noimg_last = last_noimg(q, k, v, causal, params, iv.img_mask(img_span, k.shape[-2], q.device))
    return reinforce(o, noimg_last.to(o.dtype), alpha, outlier_z).to(q.dtype)
