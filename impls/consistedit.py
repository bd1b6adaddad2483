"""ConsistEdit — Q/K/V control for consistent training-free editing in MM-DiT (Yin et al., SIGGRAPH Asia
2025), arXiv 2510.17803.

The batch holds (source, target) branches: the first half is the source, the second the target.
Only vision tokens (`img_span`) are edited, text tokens never. Outside the edited region
(`edit_span`, the mask M) the target's Q, K, V are replaced by the source's; inside it the target's
Q, K come from the source while `qk_structure` is on (the first `T_qk` sampling steps; a
step-level switch the caller flips), and V always stays the target's. `strength` blends the
replacement (1 = the paper's copy, 0 = base). Deviation: M is a span, not derived from the
text→vision attention of chosen tokens.
"""

from __future__ import annotations

from types import MappingProxyType

import torch

from attnbench import intervene as iv
from attnbench.registry import register_method
from attnbench.spec import AttentionSpec, Capabilities, Paper, Params, Workload

SPEC_CHECK_EVEN = "consistedit needs an even batch: (source, target) branch pairs"


def _check(w: Workload, params: Params) -> str | None:
    return SPEC_CHECK_EVEN if w.batch % 2 else iv.check_base(w, params)


SPEC = AttentionSpec(
    name="consistedit",
    title="ConsistEdit: vision-only Q/K/V control for consistent editing",
    paper=Paper("ConsistEdit: Highly Consistent and Precise Training-free Visual Editing", 2025, "2510.17803"),
    family="intervention",
    wraps_base=True,
    defaults={**iv.COMMON_DEFAULTS, "strength": 1.0, "qk_structure": True, "img_span": None, "edit_span": None},
    capabilities=Capabilities(causal=True, noncausal=True, gqa=False),
    flops=iv.base_flops(1.0),
    check=_check,
    claims=("State-of-the-art consistency on multi-round and multi-region image and video editing "
            "(SD3, FLUX, CogVideoX; qualitative and metric comparisons).",),
)


def edit_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, strength: float, qk_structure: bool,
             img_span: list[int] | None, edit_span: list[int] | None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The qkv_mod: target-branch tokens pulled toward the source branch (`[B, H, N, D]` each)."""
    b, n = q.shape[0], q.shape[-2]
    if b % 2:
        raise ValueError(SPEC_CHECK_EVEN)
    img = iv.img_mask(img_span, n, q.device)
    edit = iv.span_mask(edit_span, n, (0.125, 0.25), q.device) & img
    keep = img & ~edit  # non-edited vision tokens: Q, K, V from the source
    qk_rows = keep | (edit if qk_structure else torch.zeros_like(edit))
    half = b // 2

    def pull(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        src, tgt = x[:half], x[half:]
        w = (strength * rows.to(x.dtype))[None, None, :, None]
        return torch.cat([src, tgt + w * (src - tgt)], dim=0)

    return pull(q, qk_rows), pull(k, qk_rows), pull(v, keep)


@register_method(SPEC)
def consistedit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, base: str = "mha",
                base_params: Params = MappingProxyType({}), strength: float = 1.0, qk_structure: bool = True,
                img_span: list[int] | None = None, edit_span: list[int] | None = None) -> torch.Tensor:
    """Reference: edited q, k, v through the base's materialised probabilities."""
    q, k, v = edit_qkv(q, k, v, strength, qk_structure, img_span, edit_span)
    p = iv.probs(q, k, causal, {"base": base, "base_params": base_params})
    return (p @ v.to(p.dtype)).to(q.dtype)
