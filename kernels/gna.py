"""Fused GNA: the exact blocked fast path (s = k: window partition + batched SDPA) and the
GEMM-based gather kernel for any stride. FlexAttention comes from the generic backends.

Executed FLOPs: blocked SDPA computes N·Πk scores (each window's block in full); the gather
kernel counts its haloed tiles (kernels/neighborhood.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from attnbench.flops import SOFTMAX_FLOPS_PER_SCORE, core_flops, register_tile_sim
from attnbench.impls.gna import SPEC
from attnbench.impls.neighborhood import NAConfig, na_config, workload_config
from attnbench.kernels.neighborhood import haloed_flops_of, na_sim_speedup, staged_tiled
from attnbench.registry import register_backend
from attnbench.spec import Backend, FlopCount, Params, Workload

register_tile_sim(SPEC, na_sim_speedup)


def blocked_flops(w: Workload, params: Params) -> FlopCount:
    """Window partition + SDPA: N/Πk windows of Πk queries × Πk keys (causal masks inside)."""
    cfg = workload_config(w, params)
    pairs = cfg.n * math.prod(cfg.kernel)
    return FlopCount(useful=SPEC.flops(w, params).useful, executed=core_flops(w, pairs),
                     softmax=SOFTMAX_FLOPS_PER_SCORE * w.batch * w.heads_q * pairs)


def _config(n: int, causal: bool, **params: Any) -> NAConfig:
    cfg = na_config(n, causal, params, params.get("spatial"))
    if (why := cfg.problem()) is not None:
        raise ValueError(why)
    return cfg


def blocked_problem(cfg: NAConfig) -> str | None:
    """Why the window-partition fast path does not apply to `cfg`, or None."""
    if cfg.stride != cfg.kernel:
        return (f"the window-partition fast path needs stride == kernel_size on every axis "
                f"(blocked attention); got stride={cfg.stride}, kernel_size={cfg.kernel}")
    for ax, (n, k, d) in enumerate(zip(cfg.shape, cfg.kernel, cfg.dilation, strict=False)):
        if n % (k * d):
            return f"axis {ax}: length {n} is not a multiple of kernel_size·dilation = {k * d}"
    return None


def blocked_can_run(w: Workload, params: Params) -> str | None:
    try:
        return blocked_problem(workload_config(w, params))
    except ValueError as exc:
        return str(exc)


def blocked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: NAConfig) -> torch.Tensor:
    """s = k: every window is an independent block; partition, run SDPA per block, un-partition.

    Axis n splits as (n / (k·d), k, d): the k slots of one window are one residue class of
    one block. Causal axes are block-local causal (the window ends at the group's last query).
    """
    b, hq, n, d = q.shape
    r = len(cfg.shape)
    split = [x for nn, kk, dd in zip(cfg.shape, cfg.kernel, cfg.dilation, strict=True)
             for x in (nn // (kk * dd), kk, dd)]
    # dims after view: b, h, (nb_i, k_i, d_i)*r, D → b, (nb_i, d_i)*r, h, (k_i)*r, D
    groups = [2 + 3 * i for i in range(r)] + [4 + 3 * i for i in range(r)]
    slots = [3 + 3 * i for i in range(r)]
    order = [0, *groups, 1, *slots, 2 + 3 * r]
    kk = math.prod(cfg.kernel)

    def partition(t: torch.Tensor) -> torch.Tensor:
        return t.view(b, t.shape[1], *split, d).permute(order).reshape(-1, t.shape[1], kk, d)

    mask = None
    if any(cfg.causal):
        mask = torch.ones(1, 1, dtype=torch.bool, device=q.device)
        for kx, c in zip(cfg.kernel, cfg.causal, strict=False):
            m = torch.ones(kx, kx, dtype=torch.bool, device=q.device)
            m = m.tril() if c else m
            mask = (mask[:, None, :, None] & m[None, :, None, :]).flatten(0, 1).flatten(1)
    o = F.scaled_dot_product_attention(partition(q), partition(k), partition(v), attn_mask=mask,
                                       enable_gqa=hq != k.shape[1])
    shape_perm = [[b, hq, *split, d][i] for i in order]
    return o.reshape(shape_perm).permute(torch.tensor(order).argsort().tolist()).reshape(b, hq, n, d)


@register_backend(SPEC, Backend.SDPA, can_run=blocked_can_run, flops=blocked_flops)
def gna_blocked_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                     kernel_size: int | Sequence[int] = 16, stride: int | Sequence[int] = 16,
                     dilation: int | Sequence[int] = 1, is_causal: bool | Sequence[bool] = False,
                     dims: int = 1, spatial: Sequence[int] | None = None) -> torch.Tensor:
    """Blocked GNA (stride == kernel_size) as window partition + batched SDPA; exact."""
    cfg = _config(q.shape[-2], causal, kernel_size=kernel_size, stride=stride, dilation=dilation,
                  is_causal=is_causal, dims=dims, spatial=spatial)
    if (why := blocked_problem(cfg)) is not None:
        raise ValueError(why)
    return blocked_attention(q, k, v, cfg)


@register_backend(SPEC, Backend.NATIVE, staged=True, flops=haloed_flops_of(SPEC))
def gna_gather(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
               kernel_size: int | Sequence[int] = 16, stride: int | Sequence[int] = 16,
               dilation: int | Sequence[int] = 1, is_causal: bool | Sequence[bool] = False,
               dims: int = 1, spatial: Sequence[int] | None = None) -> Callable[..., Any]:
    """Staged GEMM-based GNA: index table as setup, then chunked gather-einsum attention."""
    cfg = _config(q.shape[-2], causal, kernel_size=kernel_size, stride=stride, dilation=dilation,
                  is_causal=is_causal, dims=dims, spatial=spatial)
    return staged_tiled(cfg, q.device)
