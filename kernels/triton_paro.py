"""Triton backend of `paro`: real integer QKᵀ / PV on the kept blocks of the permuted tokens.

Setup (staged, `setup_ms`): the reference's frozen calibration (per-head axis permutation and
static block mask, `frozen_plan`), the per-row kept-column lists, and one warm call that compiles the kernel.
Steady state: permute → quantise Q, K (and V) per block → `_tl_paro.py` → un-permute. With
`qk_bits = pv_bits = 0` it is block-sparse attention in the input precision. Forward only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from attnbench.impls.paro import SPEC, frozen_plan, permute_heads
from attnbench.kernels._triton_util import load, triton_can_run, warm
from attnbench.registry import register_backend
from attnbench.spec import Backend, Params, Workload


def paro_triton_can_run(w: Workload, params: Params) -> str | None:
    if (why := triton_can_run(w)) is not None:
        return why
    block = params["block"]
    if block < 16 or block & (block - 1):
        return f"the triton paro kernel takes power-of-two blocks ≥ 16 (one block per tile), not {block}"
    return None


@register_backend(SPEC, Backend.TRITON, can_run=paro_triton_can_run, staged=True)
def paro_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                density: float = 0.25, block: int = 64, qk_bits: int = 0, pv_bits: int = 0,
                coverage: float = 0.9, calib_seed: int = 1234,
                spatial: Sequence[int] | None = None) -> Callable[..., torch.Tensor]:
    """Staged: the reference's frozen calibrated plan (permutation + block mask) and the compile are
    setup; returns `(q, k, v) -> o` as the reference."""
    if causal:
        raise ValueError("paro is non-causal")
    kern = load("_tl_paro")
    perm, mblk = frozen_plan(q, block=block, density=density, coverage=coverage, calib_seed=calib_seed,
                             spatial=spatial)
    inv = torch.argsort(perm, dim=-1)
    cols, counts = kern.kept_columns(mblk)

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        qp, kp, vp = (permute_heads(t, perm) for t in (q, k, v))
        o = kern.paro_forward(qp, kp, vp, cols, counts, block=block, qk_bits=qk_bits, pv_bits=pv_bits)
        return permute_heads(o, inv).to(q.dtype)

    warm(run, q, k, v)
    return run
