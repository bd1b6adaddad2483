"""Triton kernels: backward of the row-range attention of `_tl_range.py` (FlashAttention-2 style).

Recomputes P from the saved row log-sum-exp. `dq`: one program per BM query rows, over the key
tiles of their band (as the forward). `dk, dv`: one program per BN keys of one kv head, over the
query tiles whose bands reach those keys (per key: first/last query row that sees it, from the
monotone row ranges) and over the kv head's query-head group, so no atomics are needed. Inputs are
contiguous `[B, H, N, D]`. Imported lazily.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from attnbench.kernels._tl_ops import rmax, rmin
from attnbench.kernels._triton_util import pow2, precision

INTERPRETED = False  # set by _triton_util.load


@triton.jit
def _probs(q, kk, lse, rows, cols, lo, hi, NQ, NK, PREC: tl.constexpr):
    s = tl.dot(q, tl.trans(kk), input_precision=PREC)
    ok = (cols[None, :] >= lo[:, None]) & (cols[None, :] <= hi[:, None]) & (rows < NQ)[:, None]
    ok = ok & (cols < NK)[None, :]
    return tl.where(ok, tl.exp(s - lse[:, None]), 0.0)


@triton.jit
def _range_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, LO, HI, H, G, NQ, NK, D, scale,
                  BD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    bk = (bh // H) * (H // G) + (bh % H) // G  # the kv head of query head bh
    rows = pid_m * BM + tl.arange(0, BM)
    rd = tl.arange(0, BD)
    rn = tl.arange(0, BN)
    rmask = rows < NQ
    qmask = rmask[:, None] & (rd < D)[None, :]
    lo = tl.load(LO + rows, mask=rmask, other=NK)
    hi = tl.load(HI + rows, mask=rmask, other=-1)
    q = tl.load(Q + bh * NQ * D + rows[:, None] * D + rd[None, :], mask=qmask, other=0.0).to(tl.float32) * scale
    do = tl.load(DO + bh * NQ * D + rows[:, None] * D + rd[None, :], mask=qmask, other=0.0).to(tl.float32)
    lse = tl.load(LSE + bh * NQ + rows, mask=rmask, other=0.0)
    delta = tl.load(DELTA + bh * NQ + rows, mask=rmask, other=0.0)
    dq = tl.full([BM, BD], 0.0, dtype=tl.float32)
    for n0 in range((rmin(lo, 0) // BN) * BN, rmax(hi, 0) + 1, BN):
        cols = n0 + rn
        kvmask = (cols < NK)[:, None] & (rd < D)[None, :]
        kk = tl.load(K + bk * NK * D + cols[:, None] * D + rd[None, :], mask=kvmask, other=0.0).to(tl.float32)
        vv = tl.load(V + bk * NK * D + cols[:, None] * D + rd[None, :], mask=kvmask, other=0.0).to(tl.float32)
        p = _probs(q, kk, lse, rows, cols, lo, hi, NQ, NK, PREC)
        dp = tl.dot(do, tl.trans(vv), input_precision=PREC)
        dq += tl.dot(p * (dp - delta[:, None]), kk, input_precision=PREC)
    tl.store(DQ + bh * NQ * D + rows[:, None] * D + rd[None, :], (dq * scale).to(DQ.dtype.element_ty), mask=qmask)


@triton.jit
def _range_bwd_dkv(Q, K, V, DO, LSE, DELTA, DK, DV, LO, HI, QLO, QHI, HKV, G, NQ, NK, D, scale,
                   BD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr):
    pid_n = tl.program_id(0)
    bk = tl.program_id(1)  # b · Hkv + kv head
    cols = pid_n * BN + tl.arange(0, BN)
    rd = tl.arange(0, BD)
    rm = tl.arange(0, BM)
    cmask = cols < NK
    kvmask = cmask[:, None] & (rd < D)[None, :]
    kk = tl.load(K + bk * NK * D + cols[:, None] * D + rd[None, :], mask=kvmask, other=0.0).to(tl.float32)
    vv = tl.load(V + bk * NK * D + cols[:, None] * D + rd[None, :], mask=kvmask, other=0.0).to(tl.float32)
    first = (rmin(tl.load(QLO + cols, mask=cmask, other=NQ), 0) // BM) * BM
    last = rmax(tl.load(QHI + cols, mask=cmask, other=-1), 0) + 1
    dk = tl.full([BN, BD], 0.0, dtype=tl.float32)
    dv = tl.full([BN, BD], 0.0, dtype=tl.float32)
    for g in range(0, G):
        bh = (bk // HKV) * (HKV * G) + (bk % HKV) * G + g  # query head g of this kv head's group
        for m0 in range(first, last, BM):
            rows = m0 + rm
            rmask = rows < NQ
            qmask = rmask[:, None] & (rd < D)[None, :]
            lo = tl.load(LO + rows, mask=rmask, other=NK)
            hi = tl.load(HI + rows, mask=rmask, other=-1)
            q = tl.load(Q + bh * NQ * D + rows[:, None] * D + rd[None, :], mask=qmask, other=0.0)
            q = q.to(tl.float32) * scale
            do = tl.load(DO + bh * NQ * D + rows[:, None] * D + rd[None, :], mask=qmask, other=0.0).to(tl.float32)
            lse = tl.load(LSE + bh * NQ + rows, mask=rmask, other=0.0)
            delta = tl.load(DELTA + bh * NQ + rows, mask=rmask, other=0.0)
            p = _probs(q, kk, lse, rows, cols, lo, hi, NQ, NK, PREC)  # [BM, BN]
            dv += tl.dot(tl.trans(p), do, input_precision=PREC)
            ds = p * (tl.dot(do, tl.trans(vv), input_precision=PREC) - delta[:, None])
            dk += tl.dot(tl.trans(ds), q, input_precision=PREC)
    tl.store(DK + bk * NK * D + cols[:, None] * D + rd[None, :], dk.to(DK.dtype.element_ty), mask=kvmask)
    tl.store(DV + bk * NK * D + cols[:, None] * D + rd[None, :], dv.to(DV.dtype.element_ty), mask=kvmask)


def query_ranges(lo: torch.Tensor, hi: torch.Tensor, nk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per key, the first and last query row whose range contains it (`[Nk]` int32; empty: first > last).

    Needs non-decreasing `lo` and `hi` (windows and 1-D neighborhoods are); else every row is listed."""
    lo64, hi64 = lo.long(), hi.long()
    j = torch.arange(nk, device=lo.device)
    if bool((lo64.diff() < 0).any() or (hi64.diff() < 0).any()):
        return torch.zeros(nk, dtype=torch.int32, device=lo.device), torch.full_like(j, len(lo) - 1).int()
    first = torch.searchsorted(hi64.contiguous(), j, right=False)  # first row with hi >= j
    last = torch.searchsorted(lo64.contiguous(), j, right=True) - 1  # last row with lo <= j
    return first.int(), last.int()


def range_backward(q, k, v, o, lse, do, lo, hi, qlo, qhi, *, block: tuple[int, int]):
    """dq, dk, dv of the row-range attention (all tensors contiguous `[B, H, N, D]`)."""
    b, hq, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    do = do.contiguous()
    delta = (do.float() * o.float()).sum(-1).reshape(b * hq, nq).contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    bm, bn = block
    args = dict(BD=pow2(d), BM=bm, BN=bn, PREC=precision(q))
    _range_bwd_dq[(triton.cdiv(nq, bm), b * hq)](q, k, v, do, lse, delta, dq, lo, hi, hq, hq // hkv, nq, nk, d,
                                                  d**-0.5, **args)
    _range_bwd_dkv[(triton.cdiv(nk, bn), b * hkv)](q, k, v, do, lse, delta, dk, dv, lo, hi, qlo, qhi, hkv,
                                                    hq // hkv, nq, nk, d, d**-0.5, **args)
    return dq, dk, dv
