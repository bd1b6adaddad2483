"""ConsistEdit fused: the edit mask from the edit tokens' rows only (a few rows of probabilities, O(N·D) per
row and head), then a pure qkv_mod before the base's fused backend (SDPA for mha)."""

from __future__ import annotations

from types import MappingProxyType

import torch

from attnbench import intervene as iv
from attnbench.impls.consistedit import SPEC, edit_qkv, edit_rows, mask_from_attention
from attnbench.registry import register_backend
from attnbench.spec import Backend, Params


@register_backend(SPEC, Backend.SDPA)
def consistedit_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                     base: str = "mha", base_params: Params = MappingProxyType({}), strength: float = 1.0,
                     qk_structure: bool = True, img_span: list[int] | None = None,
                     edit_span: list[int] | None = None, edit_tokens: list[int] | None = None,
                     mask_threshold: float = 0.5) -> torch.Tensor:
    params = {"base": base, "base_params": base_params}
    n, half = q.shape[-2], q.shape[0] // 2
    edit: torch.Tensor | list[int] | None = edit_span
    if edit_span is None and q.shape[0] % 2 == 0:
        rows = [iv.rows_probs(q[half:], k[half:], causal, params, slice(t, t + 1)) for t in edit_rows(edit_tokens, n)]
        edit = mask_from_attention(torch.cat(rows, 2), iv.img_mask(img_span, n, q.device), mask_threshold)
    q, k, v = edit_qkv(q, k, v, strength, qk_structure, img_span, edit)
    return iv.base_out(q, k, v, causal, params, fused=True)
