"""GIFT fused: saliency from the query rows' probabilities only (N/4 rows), then one FlexAttention call
with `score_mod = s + [q ∈ rows]·logG[b, kv]` (identity 1: multiply-then-renormalise == add log; exact);
a given `saliency` (the model-level one from the saliency layer) skips the query-row probabilities."""

from __future__ import annotations

from types import MappingProxyType

import torch

from attnbench import intervene as iv
from attnbench.impls.gift import SPEC, log_gains, query_rows, row_mask, saliency_of
from attnbench.ops import flex_can_run
from attnbench.registry import register_backend
from attnbench.spec import Backend, Params


@register_backend(SPEC, Backend.FLEX, can_run=flex_can_run)
def gift_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, base: str = "mha",
              base_params: Params = MappingProxyType({}), alpha: float = 5.0, query_gain: float | None = None,
              head_frac: float = 0.5, img_span: list[int] | None = None, query_span: list[int] | None = None,
              saliency: torch.Tensor | None = None, rows: list[int] | None = None, sal_layer: int | None = None,
              layer_range: list[int] | None = None) -> torch.Tensor:
    params = {"base": base, "base_params": base_params}
    n = k.shape[-2]
    img, qmask = iv.img_mask(img_span, n, q.device), iv.span_mask(query_span, n, (0.75, 1.0), q.device)
    sal = saliency_of(iv.rows_probs(q, k, causal, params, query_rows(query_span, n)), img, head_frac) \
        if saliency is None else saliency.to(q.device)
    gains = log_gains(sal, img, qmask, alpha, query_gain).to(q.dtype)
    edited = row_mask(rows, q.shape[-2], q.device)

    def score_edit(score, b, h, q_idx, kv_idx):
        return score + torch.where(edited[q_idx], gains[b, kv_idx], 0.0)

    return iv.flex(q, k, v, causal, params, score_edit=score_edit)[0]
