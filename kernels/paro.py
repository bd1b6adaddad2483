"""PARO fused backends. Calibration (permutation choice + static block mask) is setup in both.

- `flex` / `flex_compiled` (staged): per-head permutation, then FlexAttention with a BlockMask
  built straight from the block mask (`BLOCK_SIZE = block`, every kept tile full), then the
  inverse permutation. Q/K (and V) fake quantisation is applied to the inputs; P cannot be
  quantised inside flex, so `pv_bits > 0` is refused with a reason.
- `native` (staged): the fake-quant path. Per block row it gathers only the kept KV blocks and
  quantises Q, K, P, V per block exactly as the reference does. Not measured: real INT8/INT4 mma
  (no low-bit kernel here), so its latency is that of fp32 math plus quantise-dequantise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from attnbench.impls.paro import SPEC, fake_quant, paro_plan, permute_heads, token_mask
from attnbench.impls.vmoba import as_grid
from attnbench.kernels.moba import FlexPlan, block_mask_from_dense, flex_can_run, register_flex
from attnbench.registry import register_backend
from attnbench.spec import Backend, Params, Workload

_ROWS_PER_CHUNK = 16  # block rows attended at once by the native path (bounds the gathered K/V)


def _plan(q: torch.Tensor, k: torch.Tensor, *, causal: bool, spatial: Sequence[int] | None, block: int,
          density: float, coverage: float) -> tuple[torch.Tensor, torch.Tensor]:
    if causal:
        raise ValueError("paro is non-causal")
    return paro_plan(q, k, grid=as_grid(q.shape[2], spatial), block=block, density=density, coverage=coverage)


def _flex_plan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
               density: float = 0.25, block: int = 64, qk_bits: int = 0, pv_bits: int = 0,
               coverage: float = 0.9, spatial: Sequence[int] | None = None) -> FlexPlan:
    if pv_bits:
        raise ValueError("flex cannot quantise P; use the native backend for pv_bits > 0")
    perm, mblk = _plan(q, k, causal=causal, spatial=spatial, block=block, density=density, coverage=coverage)

    def pre(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        return fake_quant(q, qk_bits, block), fake_quant(k, qk_bits, block), v

    def mask_mod(b, h, q_idx, kv_idx):
        return mblk[h, q_idx // block, kv_idx // block]

    return FlexPlan(block_mask_from_dense(token_mask(mblk, block)[None], mask_mod, block=block), perm=perm,
                    pre=pre if qk_bits else None)


def _flex_can_run(w: Workload, params: Params) -> str | None:
    if params.get("pv_bits"):
        return "flex cannot quantise P (pv_bits > 0); the native backend runs the fake-quant path"
    return flex_can_run(w, params)


register_flex(SPEC, _flex_plan, can_run=_flex_can_run)


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
                coverage: float = 0.9, spatial: Sequence[int] | None = None) -> Callable[..., torch.Tensor]:
    """Staged: calibrate once, then permute → gathered fake-quant block attention → un-permute."""
    with torch.no_grad():
        perm, mblk = _plan(q, k, causal=causal, spatial=spatial, block=block, density=density,
                           coverage=coverage)
    inv = torch.argsort(perm, dim=-1)

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        qp, kp, vp = (permute_heads(t, perm) for t in (q, k, v))
        o = block_gathered_attention(qp, kp, vp, mblk, block=block, qk_bits=qk_bits, pv_bits=pv_bits)
        return permute_heads(o, inv).to(q.dtype)

    return run


register_backend(SPEC, Backend.NATIVE, staged=True)(paro_native)
