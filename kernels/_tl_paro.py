"""Triton kernel: PARO block-sparse attention on permuted tokens, INT8 (or INT4-valued) QKᵀ and PV.

A program owns one `block`-row of one (batch, head) and visits only the kept key blocks of that row
(a per-row column list from calibration). Two passes, as PARO's P quantisation needs the final
softmax: pass 1 computes the row max and normaliser over the kept blocks; pass 2 recomputes the
scores, normalises P, quantises each block×block tile of P with its own scale (symmetric, like
the reference's `fake_quant`) and accumulates `P_int · V_int` with one scale per (P tile, V block).
Q/K (and V) arrive as integers with one scale per `block` rows; `tl.dot` on int8 gives int32
(the head dim is padded to ≥ 32, the K-depth of int8 mma).
INT4 values are held in int8 (no int4 mma in Triton): the accuracy is PARO's INT4, the speed is INT8's.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from attnbench.kernels._tl_ops import rmax, rsum
from attnbench.kernels._triton_util import pow2, precision

INTERPRETED = False  # set by _triton_util.load


@triton.jit
def _round_half_even(x):
    r = tl.floor(x + 0.5)
    tie = (r - x) == 0.5
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    return tl.where(tie & odd, r - 1.0, r)


@triton.jit
def _scores(q, k_ptrs, kmask, qs, KS, c, bh, NB, scale, QK_INT: tl.constexpr, PREC: tl.constexpr):
    kk = tl.load(k_ptrs, mask=kmask, other=0)
    if QK_INT:
        s = tl.dot(q, tl.trans(kk), out_dtype=tl.int32).to(tl.float32)
        return s * (qs * tl.load(KS + bh * NB + c) * scale)
    return tl.dot(q, tl.trans(kk.to(tl.float32)), input_precision=PREC) * scale


@triton.jit
def _paro_fwd(Q, K, V, Out, QS, KS, VS, COLS, CNT, H, N, NB, W, D, scale, sn,
              BLK: tl.constexpr, BD: tl.constexpr, QK_INT: tl.constexpr, PV_QMAX: tl.constexpr,
              PREC: tl.constexpr):
    r = tl.program_id(0)
    bh = tl.program_id(1)
    h = bh % H
    rows = r * BLK + tl.arange(0, BLK)
    rk = tl.arange(0, BLK)
    rd = tl.arange(0, BD)
    dmask = (rd < D)[None, :]
    base = bh * N * sn  # contiguous [B·H, N, D]
    q = tl.load(Q + base + rows[:, None] * sn + rd[None, :], mask=dmask, other=0)
    if QK_INT:
        qs = tl.load(QS + bh * NB + r)
    else:
        q = q.to(tl.float32)
        qs = 1.0
    cnt = tl.load(CNT + h * NB + r)
    m = tl.full([BLK], float("-inf"), dtype=tl.float32)
    den = tl.full([BLK], 0.0, dtype=tl.float32)
    for t in range(0, cnt):  # pass 1: row max and normaliser over the kept blocks
        c = tl.load(COLS + (h * NB + r) * W + t)
        s = _scores(q, K + base + (c * BLK + rk)[:, None] * sn + rd[None, :], dmask, qs, KS, c, bh, NB, scale,
                    QK_INT, PREC)
        m_new = tl.maximum(m, rmax(s, 1))
        den = den * tl.exp(m - m_new) + rsum(tl.exp(s - m_new[:, None]), 1)
        m = m_new
    acc = tl.full([BLK, BD], 0.0, dtype=tl.float32)
    for t in range(0, cnt):  # pass 2: normalised P, per-tile quantised, times V
        c = tl.load(COLS + (h * NB + r) * W + t)
        s = _scores(q, K + base + (c * BLK + rk)[:, None] * sn + rd[None, :], dmask, qs, KS, c, bh, NB, scale,
                    QK_INT, PREC)
        p = tl.exp(s - m[:, None]) / den[:, None]
        vv = tl.load(V + base + (c * BLK + rk)[:, None] * sn + rd[None, :], mask=dmask, other=0)
        if PV_QMAX > 0:
            ps = tl.maximum(rmax(rmax(p, 1), 0), 1e-12) / PV_QMAX
            pq = tl.minimum(_round_half_even(p / ps), PV_QMAX).to(tl.int8)
            pv = tl.dot(pq, vv, out_dtype=tl.int32).to(tl.float32)
            acc += pv * (ps * tl.load(VS + bh * NB + c))
        else:
            acc += tl.dot(p, vv.to(tl.float32), input_precision=PREC)
    tl.store(Out + base + rows[:, None] * sn + rd[None, :], acc, mask=dmask)


def quantize_blocks(x: torch.Tensor, bits: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-`block`-rows quantisation of `x [B, H, N, D]` → int8 values and fp32 scales `[B·H, N/block]`
    (the reference `fake_quant(x, bits, block)` is `values · scale`)."""
    qmax = 2 ** (bits - 1) - 1
    t = x.float().unflatten(2, (-1, block))  # [B, H, nb, block, D]
    scale = t.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12) / qmax
    vals = torch.round(t / scale).clamp(-qmax, qmax).to(torch.int8).flatten(2, 3)
    return vals.contiguous(), scale.flatten(0, 1).reshape(x.shape[0] * x.shape[1], -1).contiguous()


def kept_columns(mblk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Block mask `[H, nb, nb]` → kept column blocks per row `[H, nb, W]` (ascending) and counts `[H, nb]`."""
    counts = mblk.sum(-1)
    width = max(int(counts.max()), 1)
    cols = torch.argsort(mblk.to(torch.int8), dim=-1, descending=True, stable=True)[..., :width]
    return cols.to(torch.int32).contiguous(), counts.to(torch.int32).contiguous()


def paro_forward(qp: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor, cols: torch.Tensor, counts: torch.Tensor,
                 *, block: int, qk_bits: int, pv_bits: int) -> torch.Tensor:
    """Launch `_paro_fwd` on permuted `[B, H, N, D]` tensors; returns fp32 `[B, H, N, D]` (permuted order)."""
    b, h, n, d = qp.shape
    nb = n // block
    if qk_bits:
        (qv, qs), (kv, ks) = quantize_blocks(qp, qk_bits, block), quantize_blocks(kp, qk_bits, block)
    else:
        qv, kv, qs = qp.contiguous(), kp.contiguous(), torch.ones(1, device=qp.device)
        ks = qs
    vv, vs = quantize_blocks(vp, pv_bits, block) if pv_bits else (vp.contiguous(), torch.ones(1, device=qp.device))
    out = torch.empty(b, h, n, d, device=qp.device, dtype=torch.float32)
    _paro_fwd[(nb, b * h)](qv, kv, vv, out, qs, ks, vs, cols, counts, h, n, nb, cols.shape[-1], d, d**-0.5, d,
                           BLK=block, BD=pow2(d, 32 if qk_bits or pv_bits else 16), QK_INT=bool(qk_bits),
                           PV_QMAX=2 ** (pv_bits - 1) - 1 if pv_bits else 0, PREC=precision(qp))
    return out
