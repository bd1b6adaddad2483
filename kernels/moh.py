"""MoH attention steps: dense SDPA + gates, and a token-grouped native step that skips inactive heads.

`native` runs the shared heads densely and, for each routed head, gathers only the queries of the
tokens that picked it (all keys stay), attends, and scatters the gated rows back: its attention
work is the active fraction `(h_s + k)/H` of the dense work.

Executed FLOPs (`Impl.flops`, projections and routers included as in the spec's count): `sdpa`
runs every head, so it executes the dense attention of all H heads; `native` executes only the
selected (token, head) rows — exact without causality (each token runs h_s + k heads over all
keys); its causal chunking depends on the routing, so it reports no model there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnbench.flops import SOFTMAX_FLOPS_PER_SCORE, causal_pairs
from attnbench.impls.moh import SPEC, head_split
from attnbench.registry import register_backend
from attnbench.spec import Backend, FlopCount, Params, Workload


def _executed(w: Workload, params: Params, heads: float, pairs: float) -> FlopCount:
    """Projections + routers (as the spec counts them) + `heads` heads' attention over `pairs`."""
    h, c, n = w.heads_q, w.d_model, w.seq_q
    h_s, _ = head_split(h, params["active_ratio"], params["shared_ratio"])
    routers = 2.0 * n * c * ((h - h_s) + (h_s + 2 if h_s else 0))
    executed = w.batch * (8.0 * n * c * c + routers + 4.0 * heads * pairs * w.head_dim)
    return FlopCount(useful=SPEC.flops(w, params).useful, executed=executed,
                     softmax=SOFTMAX_FLOPS_PER_SCORE * w.batch * heads * pairs)


def all_heads_flops(w: Workload, params: Params) -> FlopCount:
    pairs = causal_pairs(w.seq_q, w.seq_kv) if w.causal else w.seq_q * w.seq_kv
    return _executed(w, params, w.heads_q, pairs)


def selected_heads_flops(w: Workload, params: Params) -> FlopCount:
    if w.causal:
        return FlopCount(useful=SPEC.flops(w, params).useful, executed=None)
    h_s, k = head_split(w.heads_q, params["active_ratio"], params["shared_ratio"])
    return _executed(w, params, h_s + k, w.seq_q * w.seq_kv)


def _gate(o: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    return o * gates.transpose(1, 2)[..., None]


@register_backend(SPEC, Backend.SDPA, flops=all_heads_flops)
def gated_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: torch.Tensor, *,
                         causal: bool = False, n_shared: int = 0) -> torch.Tensor:
    """Every head through SDPA, then the gates: the dense baseline (no work skipped)."""
    return _gate(F.scaled_dot_product_attention(q, k, v, is_causal=causal), gates)


@register_backend(SPEC, Backend.NATIVE, flops=selected_heads_flops)
def gated_attention_grouped(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: torch.Tensor, *,
                            causal: bool = False, n_shared: int = 0) -> torch.Tensor:
    """Shared heads densely; each routed head only on the tokens that selected it.

    Args:
        q, k, v: `[B, H, N, D]`. gates: `[B, N, H]`, zero where a token skips a routed head.
        n_shared: the first `n_shared` heads are always on.
    Returns:
        gated head outputs `[B, H, N, D]`; skipped (token, head) rows are exactly 0.
    """
    b, h, n, _ = q.shape
    out = q.new_zeros(b, h, n, v.shape[-1])
    if n_shared:
        shared = F.scaled_dot_product_attention(q[:, :n_shared], k[:, :n_shared], v[:, :n_shared],
                                                is_causal=causal)
        out[:, :n_shared] = _gate(shared, gates[..., :n_shared])
    for bi in range(b):
        for hi in range(n_shared, h):
            idx = gates[bi, :, hi].nonzero().squeeze(1)  # tokens that picked this head (sorted)
            if idx.numel() == 0:
                continue
            # causal: chunks of gathered queries, each against the keys up to its last position
            for part in idx.split(_CAUSAL_CHUNK) if causal else (idx,):
                o = _attend_rows(q[bi, hi], k[bi, hi], v[bi, hi], part, causal)
                out[bi, hi, part] = o * gates[bi, part, hi, None]
    return out


_CAUSAL_CHUNK = 256


def _attend_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor, causal: bool
                 ) -> torch.Tensor:
    """Attention of the sorted query positions `rows` of one head: `[N, D]` in, `[len(rows), D]` out."""
    stop = int(rows[-1]) + 1 if causal else k.shape[0]  # keys after the last row are masked anyway
    mask = (torch.arange(stop, device=q.device)[None] <= rows[:, None])[None, None] if causal else None
    return F.scaled_dot_product_attention(q[rows][None, None], k[None, None, :stop], v[None, None, :stop],
                                          attn_mask=mask)[0, 0]
