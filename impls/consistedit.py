"""ConsistEdit — Q/K/V control for consistent training-free editing in MM-DiT (Yin et al., SIGGRAPH Asia
2025), arXiv 2510.17803.

The batch holds (source, target) branches: the first half is the source, the second the target (an
odd batch, as in the presets' batch of 1, is run as pairs: `adapt` doubles it). Only vision tokens
(`img_span`) are edited, text tokens never. The edit mask M is derived as the paper does from the
text→vision attention of the edited prompt tokens (`edit_tokens`, default the last token): the
target branch's attention of those rows to the vision keys, averaged over heads and tokens, min-max
scaled per sequence and thresholded at `mask_threshold` (`edit_span` sets M explicitly instead).
Outside M the target's Q, K, V are replaced by the source's; inside it the target's Q, K come from
the source while `qk_structure` is on (the first `T_qk` sampling steps; a step-level switch the
caller flips), and V always stays the target's. `strength` blends the replacement (1 = the paper's
copy, 0 = base).
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


def _adapt(w: Workload, params: Params) -> Workload:
    """An odd batch runs as (source, target) pairs of it: the batch doubled."""
    return w.replace(batch=2 * w.batch) if w.batch % 2 else w


SPEC = AttentionSpec(
    name="consistedit",
    title="ConsistEdit: vision-only Q/K/V control for consistent editing",
    paper=Paper("ConsistEdit: Highly Consistent and Precise Training-free Visual Editing", 2025, "2510.17803"),
    family="intervention",
    wraps_base=True,
    defaults={**iv.COMMON_DEFAULTS, "strength": 1.0, "qk_structure": True, "img_span": None, "edit_span": None,
              "edit_tokens": None, "mask_threshold": 0.5},
    capabilities=Capabilities(causal=True, noncausal=True, gqa=False),
    flops=iv.base_flops(1.0),
    check=_check,
    adapt=_adapt,
    claims=("State-of-the-art consistency on multi-round and multi-region image and video editing "
            "(SD3, FLUX, CogVideoX; qualitative and metric comparisons).",),
)


def mask_from_attention(p_rows: torch.Tensor, img: torch.Tensor, threshold: float) -> torch.Tensor:
    """Edit mask `[B, N]` from the edit tokens' probabilities `[B, H, T, N]`: mean over heads and tokens on the
    vision keys, min-max scaled per sequence, `≥ threshold` (False off the image)."""
    a = p_rows.double().mean((1, 2))  # [B, N]
    out = torch.zeros(a.shape, dtype=torch.bool, device=a.device)
    if img.any():
        out[:, img] = iv.minmax(a[:, img]) >= threshold
    return out


def edit_rows(edit_tokens: list[int] | None, n: int) -> list[int]:
    return [int(t) % n for t in (edit_tokens if edit_tokens is not None else [-1])]


def edit_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, strength: float, qk_structure: bool,
             img_span: list[int] | None, edit: torch.Tensor | list[int] | None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The qkv_mod: target-branch tokens pulled toward the source branch (`[B, H, N, D]` each). `edit`: the
    mask M, `[B/2, N]` bool (per pair) or a span `[start, stop)` (None = the second eighth of the tokens)."""
    b, n = q.shape[0], q.shape[-2]
    if b % 2:
        raise ValueError(SPEC_CHECK_EVEN)
    img = iv.img_mask(img_span, n, q.device)
    if isinstance(edit, torch.Tensor):
        m = edit.to(q.device) & img  # [B/2, N]
    else:
        m = (iv.span_mask(edit, n, (0.125, 0.25), q.device) & img)[None]
    keep = img & ~m  # non-edited vision tokens: Q, K, V from the source
    qk_rows = keep | (m if qk_structure else torch.zeros_like(m))
    half = b // 2

    def pull(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        src, tgt = x[:half], x[half:]
        w = (strength * rows.to(x.dtype))[:, None, :, None]
        return torch.cat([src, tgt + w * (src - tgt)], dim=0)

    return pull(q, qk_rows), pull(k, qk_rows), pull(v, keep)


@register_method(SPEC)
def consistedit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, base: str = "mha",
                base_params: Params = MappingProxyType({}), strength: float = 1.0, qk_structure: bool = True,
                img_span: list[int] | None = None, edit_span: list[int] | None = None,
                edit_tokens: list[int] | None = None, mask_threshold: float = 0.5) -> torch.Tensor:
    """Reference: M from the target branch's materialised probabilities, edited q, k, v through the base's
    materialised probabilities."""
    params = {"base": base, "base_params": base_params}
    n, half = q.shape[-2], q.shape[0] // 2
    edit: torch.Tensor | list[int] | None = edit_span
    if edit_span is None and q.shape[0] % 2 == 0:
        p_tgt = iv.probs(q[half:], k[half:], causal, params)[:, :, edit_rows(edit_tokens, n)]
        edit = mask_from_attention(p_tgt, iv.img_mask(img_span, n, q.device), mask_threshold)
    q, k, v = edit_qkv(q, k, v, strength, qk_structure, img_span, edit)
    p = iv.probs(q, k, causal, params)
    return (p @ v.to(p.dtype)).to(q.dtype)
