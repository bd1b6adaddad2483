"""Triton kernel: softmax attention where each query row sees one contiguous key range [lo, hi].

Flash-attention-style forward (online softmax, fp32 accumulators; `tl.dot` on the input dtype, so
bf16/fp16 run on the tensor cores at their rate, P cast to V's dtype as FlashAttention does; the CPU
interpreter mis-multiplies bf16, so there bf16 is upcast). A program owns BM query rows and visits
only the BN-wide key tiles between its rows' smallest `lo` and largest `hi`: tiles outside the band
are never loaded (the tile skipping that makes sliding-window and 1-D neighborhood attention
O(N·w)). Rows with `lo > hi` give 0. Imported lazily.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from attnbench.device import triton_interpreted
from attnbench.kernels._tl_ops import rmax, rmin, rsum
from attnbench.kernels._triton_util import pow2, precision

INTERPRETED = False  # set by _triton_util.load


@triton.jit
def _range_fwd(Q, K, V, Out, LSE, LO, HI, sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son,
               H, G, NQ, NK, D, scale, BD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
               PREC: tl.constexpr, UPCAST: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // G
    rows = pid_m * BM + tl.arange(0, BM)
    rd = tl.arange(0, BD)
    rn = tl.arange(0, BN)
    rmask = rows < NQ
    lo = tl.load(LO + rows, mask=rmask, other=NK)
    hi = tl.load(HI + rows, mask=rmask, other=-1)
    first = (rmin(lo, 0) // BN) * BN
    last = rmax(hi, 0) + 1
    qmask = rmask[:, None] & (rd < D)[None, :]
    q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqn + rd[None, :], mask=qmask, other=0.0)  # input dtype
    if UPCAST:
        q = q.to(tl.float32)
    m = tl.full([BM], float("-inf"), dtype=tl.float32)
    den = tl.full([BM], 0.0, dtype=tl.float32)
    acc = tl.full([BM, BD], 0.0, dtype=tl.float32)
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    for n0 in range(first, last, BN):
        cols = n0 + rn
        kvmask = (cols < NK)[:, None] & (rd < D)[None, :]
        kk = tl.load(k_base + cols[:, None] * skn + rd[None, :], mask=kvmask, other=0.0)
        vv = tl.load(v_base + cols[:, None] * svn + rd[None, :], mask=kvmask, other=0.0)
        if UPCAST:
            kk = kk.to(tl.float32)
            vv = vv.to(tl.float32)
        s = tl.dot(q, tl.trans(kk), input_precision=PREC) * scale  # half operands, fp32 accumulate
        allowed = (cols[None, :] >= lo[:, None]) & (cols[None, :] <= hi[:, None])
        s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m, rmax(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - m_safe)
        p = tl.exp(s - m_safe[:, None])
        den = den * alpha + rsum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(vv.dtype), vv, input_precision=PREC)
        m = m_new
    o = acc / tl.where(den > 0, den, 1.0)[:, None]
    lse = tl.where(den > 0, tl.where(m == float("-inf"), 0.0, m) + tl.log(tl.where(den > 0, den, 1.0)), 0.0)
    tl.store(LSE + pid_bh * NQ + rows, lse, mask=rmask)  # log-sum-exp per row, for the backward
    tl.store(Out + b * sob + h * soh + rows[:, None] * son + rd[None, :], o.to(Out.dtype.element_ty), mask=qmask)


def range_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                  *, block: tuple[int, int], with_lse: bool = False
                  ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Launch `_range_fwd`: q `[B, Hq, Nq, D]`, k/v `[B, Hkv, Nk, D]`, lo/hi int32 `[Nq]` → `[B, Hq, Nq, D]`
    (and the fp32 row log-sum-exp `[B·Hq, Nq]` with `with_lse`)."""
    b, hq, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    q, k, v = (t.contiguous() if t.stride(-1) != 1 else t for t in (q, k, v))
    o = torch.empty_like(q)
    lse = torch.empty(b * hq, nq, device=q.device, dtype=torch.float32)
    bm, bn = block
    grid = (triton.cdiv(nq, bm), b * hq)
    _range_fwd[grid](q, k, v, o, lse, lo, hi, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
                     hq, hq // hkv, nq, nk, d, d**-0.5, BD=pow2(d), BM=bm, BN=bn, PREC=precision(q),
                     UPCAST=q.dtype == torch.bfloat16 and triton_interpreted())
    return (o, lse) if with_lse else o
