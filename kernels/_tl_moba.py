"""Triton kernel: MoBA forward over the key blocks the router selected, unselected blocks skipped.

A program owns BM query rows of one (batch, head). It walks the MoBA key blocks up to its last
row's block; for each it loads the rows' selection bits and, only when some row picked the
block, streams that block's keys in BN tiles (online softmax, causal, rows that did not pick it
masked). A block nobody in the tile selected costs one load of BM bits. Imported lazily.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from attnbench.kernels._tl_ops import rmax, rsum
from attnbench.kernels._triton_util import pow2, precision

INTERPRETED = False  # set by _triton_util.load


@triton.jit
def _moba_fwd(Q, K, V, Out, SEL, sqh, sqn, N, NBLK, D, BS, scale,
              BD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    rows = pid_m * BM + tl.arange(0, BM)
    rmask = rows < N
    rd = tl.arange(0, BD)
    rn = tl.arange(0, BN)
    base = pid_bh * sqh  # contiguous [B, H, N, D]: (b, h) is head pid_bh of the flattened B·H
    qmask = rmask[:, None] & (rd < D)[None, :]
    q = tl.load(Q + base + rows[:, None] * sqn + rd[None, :], mask=qmask, other=0.0).to(tl.float32) * scale
    m = tl.full([BM], float("-inf"), dtype=tl.float32)
    den = tl.full([BM], 0.0, dtype=tl.float32)
    acc = tl.full([BM, BD], 0.0, dtype=tl.float32)
    last_row = tl.minimum(pid_m * BM + BM, N) - 1
    for j in range(0, last_row // BS + 1):
        pick = tl.load(SEL + pid_bh * N * NBLK + rows * NBLK + j, mask=rmask, other=0) != 0
        if rmax(pick.to(tl.int32), 0) > 0:
            blk_end = tl.minimum(j * BS + BS, last_row + 1)
            for n0 in range(j * BS, blk_end, BN):
                cols = n0 + rn
                kvmask = (cols < blk_end)[:, None] & (rd < D)[None, :]
                kk = tl.load(K + base + cols[:, None] * sqn + rd[None, :], mask=kvmask, other=0.0)
                vv = tl.load(V + base + cols[:, None] * sqn + rd[None, :], mask=kvmask, other=0.0)
                s = tl.dot(q, tl.trans(kk.to(tl.float32)), input_precision=PREC)
                ok = pick[:, None] & (cols[None, :] <= rows[:, None]) & (cols < blk_end)[None, :]
                s = tl.where(ok, s, float("-inf"))
                m_new = tl.maximum(m, rmax(s, 1))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                alpha = tl.exp(m - m_safe)
                p = tl.exp(s - m_safe[:, None])
                den = den * alpha + rsum(p, 1)
                acc = acc * alpha[:, None] + tl.dot(p, vv.to(tl.float32), input_precision=PREC)
                m = m_new
    o = acc / tl.where(den > 0, den, 1.0)[:, None]
    tl.store(Out + base + rows[:, None] * sqn + rd[None, :], o.to(Out.dtype.element_ty), mask=qmask)


def moba_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sel: torch.Tensor, *, block_size: int,
                 block: int) -> torch.Tensor:
    """Launch `_moba_fwd`: q, k, v `[B, H, N, D]`, sel `[B, H, N, n_blocks]` bool → `[B, H, N, D]`."""
    b, h, n, d = q.shape
    q, k, v = (t.contiguous() for t in (q, k, v))
    sel = sel.to(torch.int8).contiguous()
    o = torch.empty_like(q)
    grid = (triton.cdiv(n, block), b * h)
    _moba_fwd[grid](q, k, v, o, sel, q.stride(1), q.stride(2), n, sel.shape[-1], d, block_size,
                    d**-0.5, BD=pow2(d), BM=block, BN=block, PREC=precision(q))
    return o
