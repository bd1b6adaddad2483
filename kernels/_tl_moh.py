"""Triton kernel: MoH gated attention computing only the (token, head) rows a token selected.

Per (batch, head) the host lists the active tokens first (a stable argsort of `gate == 0`, so the
positions stay ascending) with their count. A program owns BM consecutive entries of that list:
past the count it returns at once (the output is pre-zeroed), so a routed head's work is the
share of tokens that picked it. Active rows are gathered, attended flash-style (online softmax,
causal on the true positions, key loop stopping at the last row's position) and stored times their
gate. Imported lazily.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from attnbench.kernels._tl_ops import rmax, rsum
from attnbench.kernels._triton_util import pow2, precision

INTERPRETED = False  # set by _triton_util.load


@triton.jit
def _moh_fwd(Q, K, V, Out, G, ORDER, COUNT, sqb, sqh, sqn, sgb, sgn, sgh, H, N, D, scale,
             BD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    count = tl.load(COUNT + pid_bh)
    if pid_m * BM < count:
        b = pid_bh // H
        h = pid_bh % H
        slot = pid_m * BM + tl.arange(0, BM)
        smask = slot < count
        rows = tl.load(ORDER + pid_bh * N + slot, mask=smask, other=0)
        rd = tl.arange(0, BD)
        rn = tl.arange(0, BN)
        base = b * sqb + h * sqh  # q, k, v and o share one contiguous layout
        qmask = smask[:, None] & (rd < D)[None, :]
        q = tl.load(Q + base + rows[:, None] * sqn + rd[None, :], mask=qmask, other=0.0).to(tl.float32) * scale
        m = tl.full([BM], float("-inf"), dtype=tl.float32)
        den = tl.full([BM], 0.0, dtype=tl.float32)
        acc = tl.full([BM, BD], 0.0, dtype=tl.float32)
        if CAUSAL:
            stop = rmax(tl.where(smask, rows, 0), 0) + 1
        else:
            stop = N
        for n0 in range(0, stop, BN):
            cols = n0 + rn
            kvmask = (cols < N)[:, None] & (rd < D)[None, :]
            kk = tl.load(K + base + cols[:, None] * sqn + rd[None, :], mask=kvmask, other=0.0).to(tl.float32)
            vv = tl.load(V + base + cols[:, None] * sqn + rd[None, :], mask=kvmask, other=0.0).to(tl.float32)
            s = tl.dot(q, tl.trans(kk), input_precision=PREC)
            ok = (cols < N)[None, :] & smask[:, None]
            if CAUSAL:
                ok = ok & (cols[None, :] <= rows[:, None])
            s = tl.where(ok, s, float("-inf"))
            m_new = tl.maximum(m, rmax(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m - m_safe)
            p = tl.exp(s - m_safe[:, None])
            den = den * alpha + rsum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p, vv, input_precision=PREC)
            m = m_new
        gate = tl.load(G + b * sgb + rows * sgn + h * sgh, mask=smask, other=0.0).to(tl.float32)
        o = acc / tl.where(den > 0, den, 1.0)[:, None] * gate[:, None]
        tl.store(Out + base + rows[:, None] * sqn + rd[None, :], o.to(Out.dtype.element_ty), mask=qmask)


def active_order(gates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`gates [B, N, H]` → per (b, h) the token positions, active ones first in ascending order
    (`[B·H, N]` int32), and the active counts (`[B·H]` int32)."""
    active = (gates != 0).transpose(1, 2).flatten(0, 1)  # [B·H, N]
    order = torch.argsort((~active).to(torch.int8), dim=-1, stable=True)
    return order.to(torch.int32).contiguous(), active.sum(-1).to(torch.int32)


def moh_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: torch.Tensor, *, causal: bool,
                block: int) -> torch.Tensor:
    """Launch `_moh_fwd`: q, k, v `[B, H, N, D]`, gates `[B, N, H]` → gated outputs `[B, H, N, D]`."""
    b, h, n, d = q.shape
    q, k, v = (t.contiguous() for t in (q, k, v))
    order, count = active_order(gates)
    o = torch.zeros_like(q)
    grid = (triton.cdiv(n, block), b * h)
    _moh_fwd[grid](q, k, v, o, gates, order, count, *q.stride()[:3], *gates.stride(), h, n, d, d**-0.5,
                   BD=pow2(d), BM=block, BN=block, CAUSAL=causal, PREC=precision(q))
    return o
