"""Fixing-imbalanced fused: streams from the last row's probabilities (one row, O(N·D) per head), then one
FlexAttention call with `score_mod = s + [q = last]·(α_h[b,h]·top[b,kv] + β·bot[b,kv])·|s|` (exact)."""

from __future__ import annotations

from types import MappingProxyType

import torch

from attnbench import intervene as iv
from attnbench.impls.imbalance_fix import SPEC, streams
from attnbench.ops import flex_can_run
from attnbench.registry import register_backend
from attnbench.spec import Backend, Params


@register_backend(SPEC, Backend.FLEX, can_run=flex_can_run)
def imbalance_fix_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                       base: str = "mha", base_params: Params = MappingProxyType({}), alpha: float = 0.7,
                       beta: float = 0.3, top_frac: float = 0.25, head_modulation: bool = True,
                       img_span: list[int] | None = None, stream_scores: torch.Tensor | None = None,
                       layer_range: list[int] | None = None) -> torch.Tensor:
    params = {"base": base, "base_params": base_params}
    n = q.shape[-2]
    img = iv.img_mask(img_span, k.shape[-2], q.device)
    p_last = iv.rows_probs(q, k, causal, params, slice(n - 1, n))[:, :, 0]
    top, bottom, a_h = (t.to(q.dtype) for t in streams(p_last, img, top_frac, alpha, head_modulation, stream_scores))
    last = n - 1

    def score_edit(score, b, h, q_idx, kv_idx):
        gain = a_h[b, h] * top[b, kv_idx] + beta * bottom[b, kv_idx]
        return score + torch.where(q_idx == last, gain * score.abs(), 0.0)

    return iv.flex(q, k, v, causal, params, score_edit=score_edit)[0]
