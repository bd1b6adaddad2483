"""Non-approximate attention — "Deconstructing Attention" (Xue et al., 2025), arXiv 2510.11602.
Query-independent weights: `A_ij = softmax_{j≤i}(s_j)` with `s_j = SiLU(q_j)·k_j/√D` computed at the
key position (the paper's `Q = SiLU(H W_Q)`: the SiLU is applied here, to the projected q)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnbench.impls._deconstructed import PAPER
from attnbench.ops import causal_mask
from attnbench.registry import register_method
from attnbench.spec import AttentionSpec, Capabilities, FlopCount, Params, Workload

SOFTMAX_PER_KEY = 5  # exp, running max, sum, divide


def nonapprox_flops(w: Workload, params: Params) -> FlopCount:
    """Linear in N: score `2·D` per key, weighted prefix sum `2·D` per position: `4·B·H·N·D`."""
    total = 4.0 * w.batch * w.heads_q * w.seq_kv * w.head_dim
    return FlopCount(useful=total, executed=total,
                     softmax=float(SOFTMAX_PER_KEY * w.batch * w.heads_q * w.seq_kv))


SPEC = AttentionSpec(
    name="decon_nonapprox",
    title="Deconstructed attention: query-independent (non-approximate) weights",
    paper=PAPER,
    family="deconstructed",
    capabilities=Capabilities(causal=True, noncausal=True, gqa=True),
    flops=nonapprox_flops,
    check=lambda w, p: "query-independent weights need Nq == Nk" if w.seq_q != w.seq_kv else None,
    claims=("500M uniform: NLU 39.3 (≈ random 39.9); hybrid: NLU 52.9 / PPL 39.4, beating standard's "
            "51.9 on NLU.",),
)


def key_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """`s_j = SiLU(q_j)·k_j/√D`: `[B, H, N]` in fp32 (fp64 for fp64 input); GQA by repeating kv heads."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    g = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(g, dim=1) if g > 1 else k
    return (F.silu(q.to(acc)) * k.to(acc)).sum(-1) * q.shape[-1] ** -0.5


@register_method(SPEC)
def decon_nonapprox(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False
                    ) -> torch.Tensor:
    """Reference: every query row gets the logits `s_j` (masked causally), softmax, `@ v`. `[B, H, N, D]`."""
    s = key_scores(q, k)
    n = q.shape[-2]
    logits = s[..., None, :].expand(*s.shape[:-1], n, n)
    if causal:
        logits = logits.masked_fill(~causal_mask(n, n, q.device), float("-inf"))
    g = q.shape[1] // v.shape[1]
    v = v.repeat_interleave(g, dim=1) if g > 1 else v
    return (torch.softmax(logits, -1) @ v.to(s.dtype)).to(q.dtype)
