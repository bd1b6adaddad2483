"""TiC / MSA-Conv — "Vision Transformer in Convolution" (self-attention inside sliding convolution
windows), arXiv 2310.04134.

Every pixel of a 2-D grid attends over its k×k (dilated) window, centred and *not* clamped:
the image is zero-padded by d(k-1)/2, and out-of-image positions take part with logit 0 and
value 0 (padded, not masked). Interior pixels therefore equal 2-D NA; border pixels differ.
Functional form only (one head per head of the input); TiC's output conv, cyclic shifts and
inter-pooling belong to the module and are not part of this method.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from attnbench.flops import mask_flops
from attnbench.impls.neighborhood import cube_grid
from attnbench.registry import register_method
from attnbench.spec import AttentionSpec, Capabilities, FlopCount, Paper, Params, Workload


def grid_of(n: int, spatial: Sequence[int] | None) -> tuple[int, int]:
    """`spatial` when given, else the square grid of n (ValueError when n is not square)."""
    grid = tuple(spatial) if spatial else cube_grid(n, 2)
    if grid is None or len(grid) != 2 or grid[0] * grid[1] != n:
        raise ValueError(f"msa_conv needs a 2-D grid of {n} tokens; got spatial={spatial}")
    return grid[0], grid[1]


def padding(kernel_size: int, dilation: int) -> int:
    return dilation * (kernel_size - 1) // 2


def canvas_mask_mod(grid: tuple[int, int], kernel_size: int, dilation: int) -> Callable[..., Any]:
    """Flex `mask_mod` of real-pixel queries over the zero-padded KV canvas `(h+2p)·(w+2p)`."""
    p = padding(kernel_size, dilation)
    width, cw = grid[1], grid[1] + 2 * p

    def mask_mod(b: Any, h: Any, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        dr = kv_idx // cw - (q_idx // width + p)
        dc = kv_idx % cw - (q_idx % width + p)
        return ((dr.abs() <= p) & (dc.abs() <= p) & (dr % dilation == 0) & (dc % dilation == 0))

    return mask_mod


def pad_to_canvas(t: torch.Tensor, grid: tuple[int, int], pad: int) -> torch.Tensor:
    """`[B, H, h·w, D]` → zero-padded `[B, H, (h+2p)·(w+2p), D]`."""
    b, h, _, d = t.shape
    x = t.view(b, h, grid[0], grid[1], d)
    return F.pad(x, (0, 0, pad, pad, pad, pad)).reshape(b, h, -1, d)


@functools.lru_cache(maxsize=32)
def _canvas_mask(grid: tuple[int, int], kernel_size: int, dilation: int) -> torch.Tensor:
    p = padding(kernel_size, dilation)
    nq, nk = grid[0] * grid[1], (grid[0] + 2 * p) * (grid[1] + 2 * p)
    return canvas_mask_mod(grid, kernel_size, dilation)(0, 0, torch.arange(nq)[:, None],
                                                        torch.arange(nk)[None, :])


def flops(w: Workload, params: Params) -> FlopCount:
    """useful = 4·B·H·N·k²·D (padding positions included, as in the card); executed = canvas tiles."""
    return mask_flops(w, _canvas_mask(grid_of(w.seq_q, w.spatial), params["kernel_size"],
                                      params["dilation"]))


def adapt(w: Workload, params: Params) -> Workload:
    grid = cube_grid(w.seq_q, 2)
    return w.replace(spatial=grid) if w.spatial is None and grid and w.seq_q == w.seq_kv else w


def check(w: Workload, params: Params) -> str | None:
    k, d = params["kernel_size"], params["dilation"]
    if w.seq_q != w.seq_kv:
        return "msa_conv is self-attention on one grid: needs seq_q == seq_kv"
    if w.spatial is None or len(w.spatial) != 2:
        return f"msa_conv needs a 2-D grid; seq_len={w.seq_q} is not a square and no spatial was given"
    if k < 1 or k % 2 == 0 or d < 1:
        return f"msa_conv needs an odd kernel_size ≥ 1 and dilation ≥ 1 (symmetric padding); got {k}, {d}"
    return None


SPEC = AttentionSpec(
    name="msa_conv",
    title="MSA-Conv (TiC): self-attention inside sliding convolution windows, zero padded",
    paper=Paper("TiC: Exploring Vision Transformer in Convolution", 2023, "2310.04134"),
    family="sparse-local",
    defaults={"kernel_size": 3, "dilation": 1},
    capabilities=Capabilities(causal=False, noncausal=True, gqa=True, backward=True, dims=(2,)),
    flops=flops,
    adapt=adapt,
    check=check,
    claims=("Comparable to SOTA on ImageNet-1K; cheaper than global attention at high resolution.",),
)


@register_method(SPEC)
def msa_conv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
             kernel_size: int = 3, dilation: int = 1, spatial: Sequence[int] | None = None) -> torch.Tensor:
    """Reference: `F.unfold` K and V into k² (dilated, zero-padded) window slots; softmax per pixel.

    Args:
        q: `[B, Hq, h·w, D]`; k, v: `[B, Hkv, h·w, D]`; spatial = (h, w) (default: square).
    Returns:
        `[B, Hq, h·w, D]`.
    """
    if causal:
        raise ValueError("msa_conv has no causal form")
    b, hq, n, d = q.shape
    grid, g = grid_of(n, spatial), hq // k.shape[1]
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32

    def windows(t: torch.Tensor) -> torch.Tensor:  # [B, H, N, D] → [B, H, N, k², D]
        x = t.to(acc).repeat_interleave(g, dim=1).transpose(-1, -2).reshape(b * hq, d, *grid)
        u = F.unfold(x, kernel_size, dilation=dilation, padding=padding(kernel_size, dilation))
        return u.view(b, hq, d, kernel_size**2, n).permute(0, 1, 4, 3, 2)

    s = torch.einsum("bhnd,bhnjd->bhnj", q.to(acc), windows(k)) * d**-0.5
    o = torch.einsum("bhnj,bhnjd->bhnd", torch.softmax(s, dim=-1), windows(v))
    return o.to(q.dtype)
