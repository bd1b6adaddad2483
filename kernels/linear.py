"""Linear attention in O(N): a chunked form (registered as the `native` backend) and the
token-by-token recurrence (the RNN view of the paper; a plain function, used as a test oracle).

Chunked causal form, chunks of L queries: inside a chunk the masked L×L block is computed
directly; everything before it arrives as the carried state `S = Σ φ(k) vᵀ` (and `z = Σ φ(k)`),
an exclusive prefix sum over chunks. Cost O(N·L·D + N·D²) instead of O(N²·D).
The fla peer (`chunk_linear_attn`) is left out: its kernels are Triton-only and do not run on CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnbench.impls.linear import SPEC, grouped_features
from attnbench.registry import register_backend
from attnbench.spec import Backend


def _exclusive_cumsum(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum of the entries strictly before each index along `dim`."""
    c = x.cumsum(dim)
    return torch.cat([torch.zeros_like(c.narrow(dim, 0, 1)), c.narrow(dim, 0, c.shape[dim] - 1)], dim)


@register_backend(SPEC, Backend.NATIVE)
def linear_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                   feature_map: str = "elu", normalize: bool = True, chunk_size: int = 64) -> torch.Tensor:
    """Chunked linear attention; same arguments and result as the reference `linear`.

    Args:
        q: `[B, Hq, Nq, D]`; k, v: `[B, Hkv, Nk, Dv]` (Hq divisible by Hkv; causal needs Nq ≤ Nk).
        chunk_size: L, queries per chunk (causal only; the non-causal form needs no chunks).
    Returns:
        `[B, Hq, Nq, Dv]` in q's dtype.
    """
    qf, kf, vf = grouped_features(q, k, v, feature_map)  # [B, Hkv, G | 1, N, ·]
    if not causal:
        o, z = qf @ (kf.transpose(-1, -2) @ vf), qf @ kf.sum(-2, keepdim=True).transpose(-1, -2)
        return (o / z if normalize else o).flatten(1, 2).to(q.dtype)
    nq, nk = q.shape[-2], k.shape[-2]
    if nq > nk:
        raise ValueError(f"linear: causal needs Nq <= Nk, got {nq} > {nk}")
    # Keys before the first query (a cached prefix) form the initial state.
    off = nk - nq
    s0 = kf[..., :off, :].transpose(-1, -2) @ vf[..., :off, :]  # [..., D, Dv]
    z0 = kf[..., :off, :].sum(-2)  # [..., D]
    kf, vf = kf[..., off:, :], vf[..., off:, :]
    L = min(chunk_size, max(nq, 1))
    pad = (-nq) % L  # zero keys/values add nothing; padded query rows are dropped
    qc, kc, vc = (F.pad(t, (0, 0, 0, pad)).unflatten(-2, (-1, L)) for t in (qf, kf, vf))  # [..., C, L, ·]
    a = (qc @ kc.transpose(-1, -2)) * torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    states = s0.unsqueeze(-3) + _exclusive_cumsum(kc.transpose(-1, -2) @ vc, dim=-3)  # [..., C, D, Dv]
    o = (a @ vc + qc @ states).flatten(-3, -2)[..., :nq, :]  # drop padded rows before any division
    if normalize:
        zs = z0.unsqueeze(-2) + _exclusive_cumsum(kc.sum(-2), dim=-2)  # [..., C, D]
        z = (a.sum(-1) + (qc @ zs.unsqueeze(-1)).squeeze(-1)).flatten(-2, -1)[..., :nq]
        o = o / z.unsqueeze(-1)
    return o.flatten(1, 2).to(q.dtype)


def linear_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
                     feature_map: str = "elu", normalize: bool = True) -> torch.Tensor:
    """Causal linear attention one token at a time: `S += φ(k_t) v_tᵀ; o_t = φ(q_t) S` (test oracle).

    Args:
        q: `[B, Hq, N, D]`; k, v: `[B, Hkv, N, Dv]` (Nq == Nk).
    Returns:
        `[B, Hq, N, Dv]` in q's dtype.
    """
    if not causal or q.shape[-2] != k.shape[-2]:
        raise ValueError("linear_recurrent is the causal form with Nq == Nk")
    qf, kf, vf = grouped_features(q, k, v, feature_map)  # [B, Hkv, G | 1, N, ·]
    s = qf.new_zeros(*kf.shape[:3], q.shape[-1], v.shape[-1])
    z = qf.new_zeros(*kf.shape[:3], q.shape[-1])
    out = []
    for t in range(q.shape[-2]):
        s = s + kf[..., t, :, None] * vf[..., t, None, :]
        z = z + kf[..., t, :]
        o = (qf[..., t, None, :] @ s).squeeze(-2)
        out.append(o / (qf[..., t, :] * z).sum(-1, keepdim=True) if normalize else o)
    return torch.stack(out, dim=-2).flatten(1, 2).to(q.dtype)
