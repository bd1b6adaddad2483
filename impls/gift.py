"""GIFT — gaze-shift guided cross-modal fusion (Qi et al., 2025), arXiv 2510.22067.

Saliency from the gaze shift of the user-query rows over image columns,
`Δ_t = relu(A[t, img] − A[t−1, img])`, kept for the `head_frac` heads with the largest total shift,
averaged over heads and query tokens, clipped to mean ± 3σ, min-max scaled to s ∈ [0, 1]; then image
columns get the gain `S = exp(α·s)` and query columns `g_q` (default mean(S), [unverified]), with
renormalisation: `score_mod = s + α·s_j·[img] + log g_q·[query]`. As the paper applies it (model level,
`suites/hallucination/apply.py`): the saliency is computed once, at layer `sal_layer` (LLaVA-1.5: layer
11 of 32), and the gains edit only the decode rows (`rows`, the last position) of the later layers
`layer_range` (12–22 of 32); None = those fractions of the model's depth (`paper_layers`). A bare
q, k, v call (no model) takes `saliency` `[B, Nk]` when given, else computes it from its own query
rows, and edits the rows `rows` (None = every row). Deviation: every query token counts (no POS
tagger for content words).
"""

from __future__ import annotations

import math
from types import MappingProxyType

import torch

from attnbench import intervene as iv
from attnbench.registry import register_method
from attnbench.spec import AttentionSpec, Capabilities, Paper, Params

SPEC = AttentionSpec(
    name="gift",
    title="GIFT: gaze-shift guided saliency amplification",
    paper=Paper("Capturing Gaze Shifts for Guidance: Cross-Modal Fusion Enhancement for VLM Hallucination "
                "Mitigation", 2025,
                "2510.22067"),
    family="intervention",
    wraps_base=True,
    defaults={**iv.COMMON_DEFAULTS, "alpha": 5.0, "query_gain": None, "head_frac": 0.5, "img_span": None,
              "query_span": None, "saliency": None, "rows": None, "sal_layer": None, "layer_range": None},
    capabilities=Capabilities(causal=True, noncausal=True, gqa=False),
    flops=iv.base_flops(1.25),
    check=iv.check_base,
    claims=("Up to 20.7% improvement over greedy decoding on hallucination benchmarks.",),
)


def paper_layers(n_layers: int, sal_layer: int | None = None, layer_range: list[int] | None = None
                 ) -> tuple[int, tuple[int, int]]:
    """(saliency layer, [start, stop) of the edited layers): the paper's 11 | 12–22 of 32 scaled to the depth,
    the edited range starting after the saliency layer (a 2-layer model: saliency at 0, edits layer 1)."""
    ls = min(int(11 / 32 * n_layers), n_layers - 2) if sal_layer is None else int(sal_layer)
    if layer_range is not None:
        return ls, (int(layer_range[0]), int(layer_range[1]))
    start = max(ls + 1, round(12 / 32 * n_layers))
    return ls, (start, max(start + 1, round(23 / 32 * n_layers)))


def row_mask(rows: list[int] | None, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool `[N]` of the edited query rows (None = every row)."""
    return torch.ones(n, dtype=torch.bool, device=device) if rows is None else iv.index_mask(list(rows), n, device)


def query_rows(query_span: list[int] | None, n: int) -> slice:
    """Query-token rows (default: the last quarter of the sequence), extended by the row before."""
    m = iv.span_mask(query_span, n, (0.75, 1.0))
    idx = m.nonzero()[:, 0]
    if len(idx) == 0:
        return slice(0, 0)
    return slice(max(int(idx[0]) - 1, 0), int(idx[-1]) + 1)


def saliency_of(p_rows: torch.Tensor, img: torch.Tensor, head_frac: float) -> torch.Tensor:
    """Gaze-shift saliency `[B, Nk]` (0 off the image) from the probabilities of consecutive rows
    `[B, H, T, Nk]` (the first row is the one before the query span)."""
    a = p_rows[..., img].double()
    delta = (a[:, :, 1:] - a[:, :, :-1]).relu()  # [B, H, T-1, Ni]
    b, h = a.shape[:2]
    out = torch.zeros(b, img.shape[0], dtype=torch.float64, device=a.device)
    if delta.shape[2] == 0 or a.shape[-1] == 0:
        return out
    keep = delta.sum((2, 3)).topk(max(1, math.ceil(head_frac * h)), dim=-1).indices  # [B, k]
    s = torch.gather(delta, 1, keep[:, :, None, None].expand(-1, -1, *delta.shape[2:])).mean((1, 2))
    mu, sd = s.mean(-1, keepdim=True), s.std(-1, unbiased=False, keepdim=True)
    s = iv.minmax(torch.minimum(torch.maximum(s, mu - 3 * sd), mu + 3 * sd))
    out[:, img] = s
    return out


def log_gains(sal: torch.Tensor, img: torch.Tensor, qmask: torch.Tensor, alpha: float,
              query_gain: float | None) -> torch.Tensor:
    """Additive logit offsets `[B, Nk]`: α·s on image columns, log g_q on query columns."""
    s_img = alpha * sal
    if query_gain is None:
        g = torch.exp(s_img[:, img]).mean(-1, keepdim=True) if img.any() else torch.ones_like(s_img[:, :1])
    else:
        g = torch.full_like(s_img[:, :1], float(query_gain))
    return torch.where(img, s_img, 0.0) + torch.where(qmask, g.log(), 0.0)


@register_method(SPEC)
def gift(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, base: str = "mha",
         base_params: Params = MappingProxyType({}), alpha: float = 5.0, query_gain: float | None = None,
         head_frac: float = 0.5, img_span: list[int] | None = None, query_span: list[int] | None = None,
         saliency: torch.Tensor | None = None, rows: list[int] | None = None, sal_layer: int | None = None,
         layer_range: list[int] | None = None) -> torch.Tensor:
    """Reference: saliency from the materialised P (or given), then `softmax(s + [row]·log gains) v`."""
    n = k.shape[-2]
    s = iv.logits(q, k, causal, {"base": base, "base_params": base_params})
    img, qmask = iv.img_mask(img_span, n, q.device), iv.span_mask(query_span, n, (0.75, 1.0), q.device)
    sal = saliency_of(iv.softmax0(s)[:, :, query_rows(query_span, n)], img, head_frac) if saliency is None \
        else saliency.to(s.device).double()
    gains = log_gains(sal, img, qmask, alpha, query_gain)[:, None, None, :].to(s.dtype)
    p = iv.softmax0(s + gains * row_mask(rows, q.shape[-2], q.device)[:, None].to(s.dtype))
    return (p @ v.to(p.dtype)).to(q.dtype)
