"""MoH attention steps: dense SDPA + gates, and a token-grouped native step that skips inactive heads.

`native` runs the shared heads densely and, for each routed head, gathers only the queries of the
tokens that picked it (all keys stay), attends, and scatters the gated rows back: its attention
work is the active fraction `(h_s + k)/H` of the dense work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from attnbench.impls.moh import SPEC

from attnbench.registry import register_backend
from attnbench.spec import Backend


def _gate(o: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    return o * gates.transpose(1, 2)[..., None]


@register_backend(SPEC, Backend.SDPA)
def gated_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: torch.Tensor, *,
                         causal: bool = False, n_shared: int = 0) -> torch.Tensor:
    """Every head through SDPA, then the gates: the dense baseline (no work skipped)."""
    return _gate(F.scaled_dot_product_attention(q, k, v, is_causal=causal), gates)


@register_backend(SPEC, Backend.NATIVE)
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
    keys = torch.arange(k.shape[-2], device=q.device)
    for bi in range(b):
        for hi in range(n_shared, h):
            idx = gates[bi, :, hi].nonzero().squeeze(1)  # tokens that picked this head (sorted)
            if idx.numel() == 0:
                continue
            stop = int(idx[-1]) + 1 if causal else k.shape[-2]  # later keys are masked anyway
            mask = (keys[None, :stop] <= idx[:, None])[None, None] if causal else None
            o = F.scaled_dot_product_attention(q[bi, hi, idx][None, None], k[bi, hi, :stop][None, None],
                                               v[bi, hi, :stop][None, None], attn_mask=mask)[0, 0]
            out[bi, hi, idx] = o * gates[bi, idx, hi, None]
    return out
