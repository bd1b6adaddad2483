"""Approximate attention — "Deconstructing Attention" (Xue et al., 2025), arXiv 2510.11602. Softmax's
`exp(s)` replaced by its 2nd-order Taylor polynomial `1 + s + s²/2` (Based-style), `s = q·k/√D`,
normalised over the (causal) keys. The polynomial is > 0 everywhere, so the weights are valid."""

from __future__ import annotations

import torch

from attnbench.flops import SOFTMAX_FLOPS_PER_SCORE, causal_pairs, core_flops
from attnbench.impls._deconstructed import PAPER
from attnbench.ops import causal_mask, causal_mask_mod
from attnbench.registry import register_method
from attnbench.spec import AttentionSpec, Capabilities, FlopCount, Params, Workload

TAYLOR_FLOPS_PER_SCORE = 4  # s², /2, two adds


def approx_flops(w: Workload, params: Params) -> FlopCount:
    """Quadratic form: `4·B·H·pairs·D` core; polynomial + normalisation per score in `softmax`."""
    pairs = causal_pairs(w.seq_q, w.seq_kv) if w.causal else w.seq_q * w.seq_kv
    core = core_flops(w, pairs)
    per_score = TAYLOR_FLOPS_PER_SCORE + SOFTMAX_FLOPS_PER_SCORE - 1  # no exp, same sum/divide
    return FlopCount(useful=core, executed=core, softmax=per_score * w.batch * w.heads_q * pairs)


def taylor_score_mod(w: Workload, params: Params):
    """Flex `score_mod`: `log(1 + s + s²/2)`, so flex's softmax gives the normalised Taylor weights."""
    return lambda score, b, h, q_idx, kv_idx: torch.log(1.0 + score + 0.5 * score * score)


SPEC = AttentionSpec(
    name="decon_approx",
    title="Deconstructed attention: 2nd-order Taylor approximation of softmax",
    paper=PAPER,
    family="deconstructed",
    capabilities=Capabilities(causal=True, noncausal=True, gqa=True),
    flops=approx_flops,
    mask_mod=causal_mask_mod,
    score_mod=taylor_score_mod,
    claims=("500M uniform: NLU 50.2, WikiText PPL 47.9 (standard 51.9 / 38.1).",),
)


@register_method(SPEC)
def decon_approx(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
    """`Σ_j (1+s_ij+s_ij²/2) v_j / Σ_j (1+s_ij+s_ij²/2)` on `[B, H, N, D]` (GQA by repeating kv heads)."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, dim=1).to(acc), v.repeat_interleave(g, dim=1).to(acc)
    s = (q.to(acc) @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    a = 1.0 + s + 0.5 * s * s
    if causal:
        a = a * causal_mask(q.shape[-2], k.shape[-2], q.device)
    return ((a @ v) / a.sum(-1, keepdim=True)).to(q.dtype)
