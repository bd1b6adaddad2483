"""Triton kernel: chunked linear attention forward (causal and not), φ applied in the kernel.

One program per (batch, query head, BDV-wide slice of the value dim) walks the sequence in chunks
of BT rows, carrying the state `S = Σ φ(k) vᵀ` and `z = Σ φ(k)` in fp32 registers: keys before
the first query (the whole sequence when non-causal) are folded into the state first; then each
query chunk reads the state and, when causal, adds its own masked BT×BT block before folding its
keys in. Imported lazily.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from attnbench.kernels._tl_ops import rsum
from attnbench.kernels._triton_util import pow2, precision, tile

INTERPRETED = False  # set by _triton_util.load


@triton.jit
def _phi(x, ELU: tl.constexpr):
    if ELU:
        return tl.where(x > 0, x + 1.0, tl.exp(x))  # elu(x) + 1
    return x


@triton.jit
def _linear_fwd(Q, K, V, Out, sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son,
                H, G, NQ, NK, D, DV, BD: tl.constexpr, BDV: tl.constexpr, BT: tl.constexpr,
                CAUSAL: tl.constexpr, ELU: tl.constexpr, NORMALIZE: tl.constexpr, PREC: tl.constexpr):
    pid = tl.program_id(0)
    iv = tl.program_id(1)  # which BDV columns of v / o this program owns (the normaliser needs all of k)
    b = pid // H
    h = pid % H
    hk = h // G
    rt = tl.arange(0, BT)
    rd = tl.arange(0, BD)
    rdv = iv * BDV + tl.arange(0, BDV)
    q_base = Q + b * sqb + h * sqh
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    o_base = Out + b * sob + h * soh
    s_kv = tl.full([BD, BDV], 0.0, dtype=tl.float32)
    z = tl.full([BD], 0.0, dtype=tl.float32)
    if CAUSAL:
        off = NK - NQ
    else:
        off = NK
    for s0 in range(0, off, BT):  # keys before the first query: state only
        kmask = ((s0 + rt) < off)[:, None] & (rd < D)[None, :]
        kk = tl.load(k_base + (s0 + rt)[:, None] * skn + rd[None, :], mask=kmask, other=0.0).to(tl.float32)
        kk = tl.where(kmask, _phi(kk, ELU), 0.0)
        vmask = ((s0 + rt) < off)[:, None] & (rdv < DV)[None, :]
        vv = tl.load(v_base + (s0 + rt)[:, None] * svn + rdv[None, :], mask=vmask, other=0.0).to(tl.float32)
        s_kv += tl.dot(tl.trans(kk), vv, input_precision=PREC)
        z += rsum(kk, 0)
    for s0 in range(0, NQ, BT):
        rows = s0 + rt
        qmask = (rows < NQ)[:, None] & (rd < D)[None, :]
        qq = tl.load(q_base + rows[:, None] * sqn + rd[None, :], mask=qmask, other=0.0).to(tl.float32)
        qq = tl.where(qmask, _phi(qq, ELU), 0.0)
        o = tl.dot(qq, s_kv, input_precision=PREC)
        zz = rsum(qq * z[None, :], 1)
        if CAUSAL:
            kmask = (rows < NQ)[:, None] & (rd < D)[None, :]
            kk = tl.load(k_base + (off + rows)[:, None] * skn + rd[None, :], mask=kmask, other=0.0).to(tl.float32)
            kk = tl.where(kmask, _phi(kk, ELU), 0.0)
            vmask = (rows < NQ)[:, None] & (rdv < DV)[None, :]
            vv = tl.load(v_base + (off + rows)[:, None] * svn + rdv[None, :], mask=vmask, other=0.0)
            vv = vv.to(tl.float32)
            a = tl.dot(qq, tl.trans(kk), input_precision=PREC)
            a = tl.where(rt[:, None] >= rt[None, :], a, 0.0)
            o += tl.dot(a, vv, input_precision=PREC)
            zz += rsum(a, 1)
            s_kv += tl.dot(tl.trans(kk), vv, input_precision=PREC)
            z += rsum(kk, 0)
        if NORMALIZE:
            o = o / tl.where(rows < NQ, zz, 1.0)[:, None]
        omask = (rows < NQ)[:, None] & (rdv < DV)[None, :]
        tl.store(o_base + rows[:, None] * son + rdv[None, :], o.to(Out.dtype.element_ty), mask=omask)


def linear_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, feature_map: str,
                   normalize: bool) -> torch.Tensor:
    """Launch `_linear_fwd`: q `[B, Hq, Nq, D]`, k/v `[B, Hkv, Nk, ·]` → `[B, Hq, Nq, Dv]` in q's dtype."""
    b, hq, nq, d = q.shape
    hkv, nk, dv = k.shape[1], k.shape[2], v.shape[-1]
    q, k, v = (t.contiguous() if t.stride(-1) != 1 else t for t in (q, k, v))
    o = torch.empty(b, hq, nq, dv, device=q.device, dtype=q.dtype)
    bt = tile(16, 64)
    bdv = min(pow2(dv), tile(16, 64))  # value slices per program: bounds the [D, BDV] state in registers
    grid = (b * hq, triton.cdiv(dv, bdv))
    _linear_fwd[grid](q, k, v, o, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
                      hq, hq // hkv, nq, nk, d, dv, BD=pow2(d), BDV=bdv, BT=bt, CAUSAL=causal,
                      ELU=feature_map == "elu", NORMALIZE=normalize, PREC=precision(q))
    return o
