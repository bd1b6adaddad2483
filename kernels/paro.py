"""PARO fused backends. The frozen calibrated plan (permutation + static block mask, from the
`calib_seed` calibration batch, input-independent) is setup in both.

- `flex` / `flex_compiled` (staged): per-head permutation, then FlexAttention with a BlockMask
  built straight from the block mask (`BLOCK_SIZE = block`, every kept tile full), then the
  inverse permutation. Q/K (and V) fake quantisation is applied to the inputs; P cannot be
  quantised inside flex, so `pv_bits > 0` is refused with a reason.
- `native` (staged): the fake-quant path. Per block row it gathers only the kept KV blocks and
  quantises Q, K, P, V per block exactly as the reference does. Not measured: real INT8/INT4 mma
  (no low-bit kernel here), so its latency is that of fp32 math plus quantise-dequantise.

Executed FLOPs: native computes, per (batch, head), every block row against the widest kept
row (nb · width · block²); eager flex every score; compiled flex the kept blocks (= useful).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from attnbench.flops import SOFTMAX_FLOPS_PER_SCORE, all_pairs_flops, core_flops, mask_flops
from attnbench.impls.paro import SPEC, fake_quant, frozen_plan, permute_heads, token_mask
from attnbench.kernels.flex import FlexPlan, register_flex
from attnbench.ops import flex_can_run
from attnbench.registry import register_backend
from attnbench.spec import Backend, FlopCount, Params, Workload

_ROWS_PER_CHUNK = 16  # block rows attended at once by the native path (bounds the gathered K/V)


def _plan(q: torch.Tensor, *, causal: bool, spatial: Sequence[int] | None, block: int, density: float,
          coverage: float, calib_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if causal:
        raise ValueError("paro is non-causal")
    return frozen_plan(q, block=block, density=density, coverage=coverage, calib_seed=calib_seed, spatial=spatial)


def _flex_plan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
               density: float = 0.25, block: int = 64, qk_bits: int = 0, pv_bits: int = 0,
               coverage: float = 0.9, calib_seed: int = 1234, spatial: Sequence[int] | None = None) -> FlexPlan:
    if pv_bits:
        raise ValueError("flex cannot quantise P; use the native backend for pv_bits > 0")
    perm, mblk = _plan(q, causal=causal, spatial=spatial, block=block, density=density, coverage=coverage,
                       calib_seed=calib_seed)

    def pre(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        return fake_quant(q, qk_bits, block), fake_quant(k, qk_bits, block), v

    return FlexPlan(token_mask(mblk, block)[None], block=block, perm=perm, pre=pre if qk_bits else None)


def _seeded_plan(w: Workload, params: Params) -> tuple[torch.Tensor, torch.Tensor]:
    q = torch.empty(w.batch, w.heads_q, w.seq_q, w.head_dim)  # only the shape is read
    return _plan(q, causal=w.causal, spatial=w.spatial, block=params["block"], density=params["density"],
                 coverage=params["coverage"], calib_seed=params["calib_seed"])


def native_flops(w: Workload, params: Params) -> FlopCount:
    _, mblk = _seeded_plan(w, params)
    nb, block = mblk.shape[-1], params["block"]
    pairs = nb * int(mblk.sum(-1).max()) * block * block
    return FlopCount(useful=SPEC.flops(w, params).useful, executed=core_flops(w, pairs),
                     softmax=SOFTMAX_FLOPS_PER_SCORE * w.batch * w.heads_q * pairs)


def compiled_flex_flops(w: Workload, params: Params) -> FlopCount:
    _, mblk = _seeded_plan(w, params)
    fc = mask_flops(w, token_mask(mblk, params["block"])[None], block=(params["block"],) * 2)
    return FlopCount(useful=SPEC.flops(w, params).useful, executed=fc.executed, softmax=fc.softmax)


def eager_flex_flops(w: Workload, params: Params) -> FlopCount:
    return all_pairs_flops(w, SPEC.flops(w, params).useful)


def _flex_can_run(w: Workload, params: Params) -> str | None:
    if params.get("pv_bits"):
        return "flex cannot quantise P (pv_bits > 0); the native backend runs the fake-quant path"
    return flex_can_run(w, params)


register_flex(SPEC, _flex_plan, dynamic=False, can_run=_flex_can_run,
              flops={Backend.FLEX: eager_flex_flops, Backend.FLEX_COMPILED: compiled_flex_flops})


def block_gathered_attention(qp: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor, mblk: torch.Tensor, *,
                             block: int, qk_bits: int, pv_bits: int) -> torch.Tensor:
    """Attention over the kept blocks only, with the reference's per-block fake quantisation.

    qp, kp, vp: `[B, H, N, D]` permuted; mblk `[H, nb, nb]` bool. Returns fp32 `[B, H, N, D]`.
    """
    acc = torch.float64 if qp.dtype == torch.float64 else torch.float32
    qp, kp, vp = (fake_quant(t.to(acc), bits, block)
                  for t, bits in ((qp, qk_bits), (kp, qk_bits), (vp, pv_bits)))
    b, h, n, d = qp.shape
    nb = n // block
    counts = mblk.sum(-1)  # [H, nb]
    width = int(counts.max())
    cols = torch.argsort(mblk.to(torch.int8), dim=-1, descending=True, stable=True)[..., :width]  # [H, nb, m]
    valid = torch.arange(width, device=qp.device) < counts[..., None]  # [H, nb, m]
    kb, vb = kp.unflatten(2, (nb, block)), vp.unflatten(2, (nb, block))  # [B, H, nb, block, D]
    heads = torch.arange(h, device=qp.device)[:, None, None]
    out = []
    for r0 in range(0, nb, _ROWS_PER_CHUNK):
        rows = slice(r0, min(nb, r0 + _ROWS_PER_CHUNK))
        idx = cols[:, rows]  # [H, c, m]
        k_g = kb[:, heads, idx].flatten(3, 4)  # [B, H, c, m·block, D]
        v_g = vb[:, heads, idx].flatten(3, 4)
        q_r = qp[:, :, rows.start * block:rows.stop * block].unflatten(2, (-1, block))  # [B, H, c, block, D]
        s = (q_r @ k_g.transpose(-1, -2)) * d ** -0.5  # [B, H, c, block, m·block]
        ok = valid[:, rows].repeat_interleave(block, dim=-1)[:, :, None, :]  # [H, c, 1, m·block]
        p = torch.softmax(s.masked_fill(~ok, float("-inf")), dim=-1)
        out.append(fake_quant(p, pv_bits, block, block) @ v_g)
    return torch.cat(out, dim=2).flatten(2, 3)


def paro_native(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                density: float = 0.25, block: int = 64, qk_bits: int = 0, pv_bits: int = 0,
                coverage: float = 0.9, calib_seed: int = 1234, spatial: Sequence[int] | None = None
                ) -> Callable[..., torch.Tensor]:
    """Staged: the frozen calibrated plan (setup), then permute → gathered fake-quant block attention
    → un-permute."""
    with torch.no_grad():
        perm, mblk = _plan(q, causal=causal, spatial=spatial, block=block, density=density, coverage=coverage,
                           calib_seed=calib_seed)
    inv = torch.argsort(perm, dim=-1)

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        qp, kp, vp = (permute_heads(t, perm) for t in (q, k, v))
        o = block_gathered_attention(qp, kp, vp, mblk, block=block, qk_bits=qk_bits, pv_bits=pv_bits)
        return permute_heads(o, inv).to(q.dtype)

    return run


register_backend(SPEC, Backend.NATIVE, staged=True, flops=native_flops)(paro_native)
