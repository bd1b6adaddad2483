"""Triton backends of `sliding_window` and 1-D `neighborhood`: one row-range kernel with tile skipping.

Both patterns give every query row one contiguous key range, so both run on `_tl_range.py`: setup
(staged: its time is `setup_ms`) computes per-row `[lo, hi]` from the method's own definition —
`key_ranges` of the window, the NA mask rows for neighborhood — and compiles the kernel with one
warm call; the steady state visits only the key tiles inside each query block's band. The in-house
comparison for flex (block mask) and NATTEN (fused NA). Backward: `_tl_range_bwd.py` (dq per query
tile, dk/dv per key tile over the query rows that see it), so both also train and time `bwd`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from attnbench.impls.neighborhood import SPEC as NA_SPEC
from attnbench.impls.neighborhood import na_config, na_mask_rows, workload_config
from attnbench.impls.sliding_window import SPEC as SW_SPEC
from attnbench.impls.sliding_window import key_ranges, window_flops
from attnbench.kernels._triton_util import load, tile, triton_can_run, warm
from attnbench.registry import register_backend
from attnbench.spec import Backend, FlopCount, Params, Workload

GPU_BLOCK = (64, 64)
ROW_CHUNK = 2048  # NA mask rows built per step when deriving the ranges (bounded memory at N=16k+)


def _block() -> tuple[int, int]:
    b = tile(32, 64)
    return b, b


class _RangeAttention(torch.autograd.Function):
    """Row-range attention with the Triton backward (`_tl_range_bwd.py`); P recomputed from the LSE."""

    @staticmethod
    def forward(ctx, q, k, v, plan):  # noqa: ANN001, ANN205 — autograd.Function protocol
        q, k, v = (t.contiguous() for t in (q, k, v))
        o, lse = plan["fwd"].range_forward(q, k, v, plan["lo"], plan["hi"], block=plan["block"], with_lse=True)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.plan = plan
        return o

    @staticmethod
    def backward(ctx, do):  # noqa: ANN001, ANN205
        q, k, v, o, lse = ctx.saved_tensors
        p = ctx.plan
        dq, dk, dv = p["bwd"].range_backward(q, k, v, o, lse, do, p["lo"], p["hi"], p["qlo"], p["qhi"],
                                             block=p["block"])
        return dq, dk, dv, None


def ranged(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lo: torch.Tensor,
           hi: torch.Tensor) -> Callable[..., torch.Tensor]:
    """Setup done: key ranges per row (and query ranges per key for the backward), compile with one warm
    call; return the steady-state `(q, k, v) -> o`, differentiable through the Triton backward."""
    lo, hi = lo.to(device=q.device, dtype=torch.int32), hi.to(device=q.device, dtype=torch.int32)
    bwd = load("_tl_range_bwd")
    qlo, qhi = bwd.query_ranges(lo, hi, k.shape[-2])
    plan = {"fwd": load("_tl_range"), "bwd": bwd, "lo": lo, "hi": hi, "qlo": qlo, "qhi": qhi, "block": _block()}

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            return _RangeAttention.apply(q, k, v, plan)
        return plan["fwd"].range_forward(q, k, v, lo, hi, block=plan["block"])

    warm(run, q, k, v)
    return run


def sw_can_run(w: Workload, params: Params) -> str | None:
    return triton_can_run(w, backward=True)


def sw_flops(w: Workload, params: Params) -> FlopCount:
    """The tiles this kernel visits on a GPU (64×64), not flex's 128×128."""
    return window_flops(w, params, block=GPU_BLOCK)


@register_backend(SW_SPEC, Backend.TRITON, can_run=sw_can_run, staged=True, flops=sw_flops)
def sliding_window_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                          window: int = 32) -> Callable[..., torch.Tensor]:
    """Staged: per-row key ranges of the window (O(N)), then the row-range kernel."""
    w = Workload(seq_q=q.shape[-2], seq_kv=k.shape[-2], causal=causal)
    lo, hi = key_ranges(w, window)
    return ranged(q, k, v, lo, hi)


def na_ranges(cfg, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row first/last visible key of a 1-D NA config, from its mask rows (chunked); raises if not contiguous."""
    n = cfg.n
    los, his = [], []
    for s in range(0, n, ROW_CHUNK):
        m = na_mask_rows(cfg, torch.arange(s, min(n, s + ROW_CHUNK), device=device))
        idx = torch.arange(n, device=device)
        lo = torch.where(m, idx, n).amin(-1)
        hi = torch.where(m, idx, -1).amax(-1)
        if bool((m.sum(-1) != (hi - lo + 1).clamp(min=0)).any()):
            raise ValueError("neighborhood rows are not contiguous key ranges (dilation > 1?)")
        los.append(lo)
        his.append(hi)
    return torch.cat(los), torch.cat(his)


def na_can_run(w: Workload, params: Params) -> str | None:
    if (why := triton_can_run(w, backward=True)) is not None:
        return why
    try:
        cfg = workload_config(w, params)
    except ValueError as exc:
        return str(exc)
    if len(cfg.shape) != 1:
        return "the triton neighborhood kernel is 1-D (2-D/3-D windows are not one key range per row)"
    if cfg.dilation[0] != 1:
        return "the triton neighborhood kernel takes dilation 1 (dilated windows are not contiguous)"
    return cfg.problem()


@register_backend(NA_SPEC, Backend.TRITON, can_run=na_can_run, staged=True)
def neighborhood_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                        kernel_size: int | Sequence[int] = 7, dilation: int | Sequence[int] = 1,
                        is_causal: bool | Sequence[bool] = False, dims: int = 1,
                        spatial: Sequence[int] | None = None) -> Callable[..., torch.Tensor]:
    """Staged: the NA rows' key ranges (from `na_mask_rows`, so exactly the reference's), then the kernel."""
    cfg = na_config(q.shape[-2], causal, {"kernel_size": kernel_size, "dilation": dilation,
                                          "is_causal": is_causal, "dims": dims}, spatial)
    lo, hi = na_ranges(cfg, q.device)
    return ranged(q, k, v, lo, hi)
