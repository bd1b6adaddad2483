"""Multi-head attention — "Attention Is All You Need" (Vaswani et al., 2017), arXiv 1706.03762.

The dense baseline every other method is compared with (`mha/sdpa`). Also covers GQA inputs.
"""

from __future__ import annotations

import torch

from attnbench.flops import dense_flops
from attnbench.registry import register_method
from attnbench.spec import AttentionSpec, Capabilities, Paper, Workload


def causal_mask_mod(w: Workload, params: dict):
    """Bottom-right aligned causal predicate `j <= i + Nk - Nq` (None when not causal)."""
    if not w.causal:
        return None
    offset = w.seq_kv - w.seq_q
    return lambda b, h, q_idx, kv_idx: kv_idx <= q_idx + offset


def kv_cache_bytes(w: Workload, params: dict) -> float:
    """K and V for every token, every kv head, per layer."""
    return 2.0 * w.batch * w.heads_kv * w.seq_kv * w.head_dim * torch.finfo(w.torch_dtype).bits / 8


SPEC = AttentionSpec(
    name="mha",
    title="Multi-head attention",
    paper=Paper("Attention Is All You Need", 2017, "1706.03762"),
    family="dense",
    capabilities=Capabilities(gqa=True, dims=(1, 2, 3)),
    flops=dense_flops,
    kv_cache_bytes=kv_cache_bytes,
    mask_mod=causal_mask_mod,
    claims=("Dense softmax attention: O(N²) time, O(N) memory with fused kernels.",),
)


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """Naive `softmax(QKᵀ/√D + bias, masked) V` in fp32 (or fp64) with GQA by repeating kv heads.

    Args:
        q: `[B, Hq, Nq, D]`; k, v: `[B, Hkv, Nk, D]` with Hq divisible by Hkv.
        mask: boolean, broadcastable to `[B, Hq, Nq, Nk]`; True = allowed. Fully masked rows give 0.
        bias: additive logits, broadcastable to `[B, Hq, Nq, Nk]`.
    Returns:
        `[B, Hq, Nq, D]` in q's dtype.
    """
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    g = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(g, dim=1) if g > 1 else k
    v = v.repeat_interleave(g, dim=1) if g > 1 else v
    s = (q.to(acc) @ k.to(acc).transpose(-1, -2)) * q.shape[-1] ** -0.5
    if bias is not None:
        s = s + bias.to(acc)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1)
    if mask is not None:
        p = torch.nan_to_num(p, nan=0.0)
    return (p @ v.to(acc)).to(q.dtype)


def causal_mask(nq: int, nk: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """`[Nq, Nk]` boolean, bottom-right aligned: key j is visible to query i iff j ≤ i + Nk − Nq."""
    i = torch.arange(nq, device=device)[:, None]
    j = torch.arange(nk, device=device)[None, :]
    return j <= i + (nk - nq)


@register_method(SPEC)
def mha(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
    """Reference dense attention, `[B, H, N, D]` in and out."""
    mask = causal_mask(q.shape[-2], k.shape[-2], q.device) if causal else None
    return dense_attention(q, k, v, mask)
