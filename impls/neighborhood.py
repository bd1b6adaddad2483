"""Neighborhood Attention (NA / Fused NA) — "Faster Neighborhood Attention", arXiv 2403.04690.

Each query on a 1-D/2-D/3-D token grid (flattened row-major) attends to its k nearest neighbours
per axis; border windows are shifted inward, so every (non-causal) query sees exactly Πk keys.
The predicate follows NATTEN's flex mask (`get_na_flex_mask`), stride included, so GNA
(`impls/gna.py`) reuses everything here with s > 1.

The workload's `causal` flag makes the leading axis causal (the only axis in 1-D, time in 3-D);
`is_causal` (a bool or one per axis) sets further axes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from attnbench import density
from attnbench.flops import SOFTMAX_FLOPS_PER_SCORE, core_flops, tile_stats
from attnbench.ops import dense_attention
from attnbench.registry import register_method
from attnbench.spec import AttentionSpec, Capabilities, FlopCount, Paper, Params, Workload

TILE = (128, 128)  # 1-D flattened Q/KV tile used for flops_executed


@dataclass(frozen=True, slots=True)
class NAConfig:
    """A resolved (G)NA problem: grid shape and per-axis kernel, stride, dilation, causal."""

    shape: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    causal: tuple[bool, ...]

    @property
    def n(self) -> int:
        return math.prod(self.shape)

    @property
    def window(self) -> int:
        """Keys per query (Πk); causal rows may have fewer."""
        return math.prod(self.kernel)

    def problem(self) -> str | None:
        """Why this configuration is invalid, or None."""
        axes = zip(self.shape, self.kernel, self.stride, self.dilation, strict=True)
        for ax, (n, k, s, d) in enumerate(axes):
            if min(k, s, d) < 1:
                return f"axis {ax}: kernel, stride and dilation must be ≥ 1 (k={k}, s={s}, d={d})"
            if k * d > n:
                return f"axis {ax}: kernel_size·dilation = {k}·{d} exceeds the axis length {n}"
            if s > k:
                return f"axis {ax}: stride {s} exceeds kernel_size {k}"
        return None


def _per_axis(value: Any, rank: int, name: str) -> tuple[Any, ...]:
    if isinstance(value, (list, tuple)):
        if len(value) != rank:
            raise ValueError(f"{name}={list(value)} has {len(value)} entries for a {rank}-D grid")
        return tuple(value)
    return (value,) * rank


def cube_grid(n: int, rank: int) -> tuple[int, ...] | None:
    """`(s,)*rank` with s**rank == n, or None when n is not a perfect power."""
    side = round(n ** (1.0 / rank))
    for s in (side - 1, side, side + 1):
        if s > 0 and s**rank == n:
            return (s,) * rank
    return None


def na_config(seq_len: int, causal: bool, params: Params,
              spatial: Sequence[int] | None = None) -> NAConfig:
    """Resolve params (`kernel_size`, `dilation`, `stride`, `is_causal`, `dims`) on a grid.

    The grid is `spatial` when given, else `params["spatial"]`, else a square/cubic grid of
    `seq_len` with `dims` axes. Raises ValueError when no grid fits.
    """
    spatial = spatial or params.get("spatial")
    rank = len(spatial) if spatial else int(params.get("dims", 1))
    shape = tuple(spatial) if spatial else (seq_len,) if rank == 1 else cube_grid(seq_len, rank)
    if shape is None:
        raise ValueError(f"seq_len={seq_len} is not a perfect {rank}-th power; pass spatial=")
    if math.prod(shape) != seq_len:
        raise ValueError(f"spatial {shape} does not multiply to seq_len={seq_len}")
    is_causal = _per_axis(params.get("is_causal", False), rank, "is_causal")
    return NAConfig(shape=shape,
                    kernel=_per_axis(params["kernel_size"], rank, "kernel_size"),
                    stride=_per_axis(params.get("stride", 1), rank, "stride"),
                    dilation=_per_axis(params.get("dilation", 1), rank, "dilation"),
                    causal=tuple(bool(c) or (ax == 0 and causal) for ax, c in enumerate(is_causal)))


def workload_config(w: Workload, params: Params) -> NAConfig:
    return na_config(w.seq_q, w.causal, params, w.spatial)


# ---- the per-axis predicate (works on coordinate grids and inside a flex mask_mod) ----

def _window_start(xp: torch.Tensor, np_: torch.Tensor, k: int, s: int, causal: bool) -> torch.Tensor:
    """First key (in residue coordinates) of the window of query `xp` on an axis of `np_` tokens."""
    if causal:  # leader = last query of the stride group; window ends at the leader
        leader = torch.minimum((xp // s) * s + s - 1, np_ - 1)
        return leader - k + 1
    left, right = k // 2, k // 2 + k % 2 - 1
    leader = torch.minimum((xp // s) * s + s // 2, np_ - 1)  # centre query of the stride group
    centre = torch.minimum(leader.clamp(min=left), np_ - 1 - right)  # shift inside the axis
    return centre - left


def axis_allowed(x: torch.Tensor, y: torch.Tensor, n: int, k: int, s: int, d: int,
                 causal: bool) -> torch.Tensor:
    """May query coordinate `x` see key coordinate `y` on an axis of length n? (broadcasts)"""
    r = x % d
    xp, yp = x // d, y // d
    np_ = (n - r + d - 1) // d  # tokens in x's residue class
    start = _window_start(xp, np_, k, s, causal)
    ok = (y % d == r) & (yp >= start) & (yp < start + k)
    return ok & (yp <= xp) if causal else ok


def _unravel(idx: torch.Tensor, shape: tuple[int, ...]) -> list[torch.Tensor]:
    coords = []
    for n in reversed(shape):
        coords.append(idx % n)
        idx = idx // n
    return coords[::-1]


def na_mask_mod_of(cfg: NAConfig) -> Callable[..., torch.Tensor]:
    """FlexAttention `mask_mod(b, h, q_idx, kv_idx)` of a configuration."""
    axes = list(zip(cfg.shape, cfg.kernel, cfg.stride, cfg.dilation, cfg.causal, strict=False))

    def mask_mod(b: Any, h: Any, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        xs, ys = _unravel(q_idx, cfg.shape), _unravel(kv_idx, cfg.shape)
        out = axis_allowed(xs[0], ys[0], *axes[0])
        for x, y, ax in zip(xs[1:], ys[1:], axes[1:], strict=False):
            out = out & axis_allowed(x, y, *ax)
        return out

    return mask_mod


def axis_masks(cfg: NAConfig, device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """One `[n_i, n_i]` boolean mask per axis; the full mask is their AND (outer product)."""
    out = []
    for n, k, s, d, c in zip(cfg.shape, cfg.kernel, cfg.stride, cfg.dilation, cfg.causal, strict=False):
        i = torch.arange(n, device=device)
        out.append(axis_allowed(i[:, None], i[None, :], n, k, s, d, c))
    return out


def na_mask_rows(cfg: NAConfig, rows: torch.Tensor, masks: list[torch.Tensor] | None = None
                 ) -> torch.Tensor:
    """`[len(rows), N]` boolean mask rows of the flattened queries `rows`."""
    masks = masks if masks is not None else axis_masks(cfg, rows.device)
    coords = _unravel(rows, cfg.shape)
    out = masks[0][coords[0]]
    for m, c in zip(masks[1:], coords[1:], strict=False):
        out = (out[:, :, None] & m[c][:, None, :]).flatten(1)
    return out


def na_mask(cfg: NAConfig, device: torch.device | str = "cpu") -> torch.Tensor:
    """Dense `[N, N]` boolean mask (True = allowed)."""
    return na_mask_rows(cfg, torch.arange(cfg.n, device=device))


def tile_permutation(shape: tuple[int, ...], tile: tuple[int, ...]) -> torch.Tensor:
    """`perm[p]` = row-major token index at position p of the tile-major order (multi-dim tiling).

    Tokens of one tile (shape `tile`) become contiguous, tiles in row-major order of the grid.
    """
    if len(tile) != len(shape) or any(n % t for n, t in zip(shape, tile, strict=False)):
        raise ValueError(f"grid {shape} is not divisible by the tile shape {tile}")
    rest = tuple(n // t for n, t in zip(shape, tile, strict=False))
    # position p = (tile coords..., offset coords...) row-major; axes interleave as (rest_i, tile_i)
    grid = torch.arange(math.prod(shape)).view(*[x for r, t in zip(rest, tile, strict=False) for x in (r, t)])
    r = len(shape)
    return grid.permute(*range(0, 2 * r, 2), *range(1, 2 * r, 2)).reshape(-1)


def chunked_tile_stats(rows_fn: Callable[[torch.Tensor], torch.Tensor], n_q: int,
                       block: tuple[int, int], rows_per_chunk: int = 2048) -> dict[str, float]:
    """`attnbench.flops.tile_stats` summed over query-row chunks (aligned to the Q tile)."""
    step = max(block[0], rows_per_chunk // block[0] * block[0])
    tot: dict[str, float] = {}
    for a in range(0, n_q, step):
        st = tile_stats(rows_fn(torch.arange(a, min(a + step, n_q))), block)
        for key in ("tiles_total", "tiles_visited", "tiles_full", "tiles_partial"):
            tot[key] = tot.get(key, 0.0) + st[key]
    tot["tile_speedup_bound"] = tot["tiles_total"] / max(tot["tiles_visited"], 1.0)
    return tot


@functools.lru_cache(maxsize=64)
def na_pair_and_tile_counts(cfg: NAConfig, block: tuple[int, int] = TILE) -> dict[str, float]:
    """Allowed pairs (one batch·head) and tile statistics of the flattened mask, cached per config."""
    masks = axis_masks(cfg)
    pairs = math.prod(float(m.sum()) for m in masks)  # the AND over axes factorises
    stats = chunked_tile_stats(lambda r: na_mask_rows(cfg, r, masks), cfg.n, block)
    return {"pairs": pairs, **stats}


def na_flops(w: Workload, params: Params) -> FlopCount:
    """useful = allowed pairs of the actual mask; executed = visited 128×128 tiles."""
    counts = na_pair_and_tile_counts(workload_config(w, params))
    visited = counts["tiles_visited"] * TILE[0] * TILE[1]
    return FlopCount(useful=core_flops(w, counts["pairs"]), executed=core_flops(w, visited),
                     softmax=SOFTMAX_FLOPS_PER_SCORE * w.batch * w.heads_q * counts["pairs"])


# ---- the "GEMM-based" form: an index table of every query's keys ----

def index_table(cfg: NAConfig, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """`idx [N, Πk]` (flattened key of each window slot) and `valid [N, Πk]` (False = padding).

    Non-causal rows are all valid; causal rows pad the slots before the axis start with the
    query itself (masked out through `valid`).
    """
    idx = torch.zeros(1, 1, dtype=torch.long, device=device)
    valid = torch.ones(1, 1, dtype=torch.bool, device=device)
    for n, k, s, d, c in zip(cfg.shape, cfg.kernel, cfg.stride, cfg.dilation, cfg.causal, strict=False):
        x = torch.arange(n, device=device)
        r, xp = x % d, x // d
        start = _window_start(xp, (n - r + d - 1) // d, k, s, c)
        yp = start[:, None] + torch.arange(k, device=device)[None, :]  # [n, k]
        ok = (yp >= 0) & (yp <= xp[:, None]) if c else torch.ones_like(yp, dtype=torch.bool)
        y = torch.where(ok, yp * d + r[:, None], x[:, None])
        idx = (idx[:, None, :, None] * n + y[None, :, None, :]).flatten(0, 1).flatten(1)
        valid = (valid[:, None, :, None] & ok[None, :, None, :]).flatten(0, 1).flatten(1)
    return idx, valid


# ---- method ----

def adapt(w: Workload, params: Params) -> Workload:
    """Give `dims > 1` workloads without a grid a square/cubic one (when seq_len allows)."""
    dims = int(params.get("dims", 1))
    if w.spatial is None and dims > 1 and w.seq_q == w.seq_kv:
        grid = cube_grid(w.seq_q, dims)
        if grid is not None:
            return w.replace(spatial=grid)
    return w


def check(w: Workload, params: Params) -> str | None:
    if w.seq_q != w.seq_kv:
        return "neighborhood attention is self-attention on one grid: needs seq_q == seq_kv"
    try:
        cfg = workload_config(w, params)
    except ValueError as exc:
        return str(exc)
    return cfg.problem()


def mask_mod(w: Workload, params: Params) -> Callable[..., torch.Tensor]:
    return na_mask_mod_of(workload_config(w, params))


def kernel_choices(w: Workload, params: Params, stride_ratio: float | None = None) -> list[density.Choice]:
    """One candidate per kernel size k (the same on every axis) with its exact density on `w`.

    Pairs factorise over the axes (the product of the per-axis mask sums); allowed pairs are the
    workload's (causal or all). `stride_ratio` (GNA) keeps stride ≈ ratio·k, at least 1."""
    allowed = density.allowed_pairs(w.seq_q, w.seq_kv, w.causal)
    out: list[tuple[dict, float]] = []
    for k in range(1, max(w.spatial or (w.seq_q,)) + 1):
        trial = {**params, "kernel_size": k}
        if stride_ratio is not None:
            trial["stride"] = min(k, max(1, round(k * stride_ratio)))
        try:
            cfg = workload_config(w, trial)
        except ValueError:
            continue
        if cfg.problem() is None:
            pairs = math.prod(float(m.sum()) for m in axis_masks(cfg))
            out.append(({key: trial[key] for key in ("kernel_size", "stride") if key in trial}, pairs / allowed))
    return [density.Choice(p, d, max(abs(d - out[j][1]) for j in (i - 1, i + 1) if 0 <= j < len(out))
                           if len(out) > 1 else 1.0)
            for i, (p, d) in enumerate(out)]


def at_density(w: Workload, target: float, params: Params) -> dict:
    """The kernel size (all axes) attending `target` of the allowed pairs of `w`."""
    return density.pick(kernel_choices(w, params), target)


SPEC = AttentionSpec(
    name="neighborhood",
    title="Neighborhood attention (1-D/2-D/3-D, dilated, causal per axis)",
    paper=Paper("Faster Neighborhood Attention: Reducing the O(n^2) Cost of Self Attention at the "
                "Threadblock Level", 2024, "2403.04690"),
    family="sparse-local",
    defaults={"kernel_size": 7, "dilation": 1, "is_causal": False, "dims": 1},
    capabilities=Capabilities(causal=True, noncausal=True, gqa=True, backward=True, dims=(1, 2, 3)),
    flops=na_flops,
    adapt=adapt,
    check=check,
    mask_mod=mask_mod,
    at_density=at_density,
    claims=("GEMM-based NA: +895% (1-D) / +272% (2-D) average over naive NATTEN kernels in fp32.",
            "Fused NA in half precision: about +1607% (1-D) / +581% (2-D) over naive kernels."),
)


@register_method(SPEC)
def neighborhood(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                 kernel_size: int | Sequence[int] = 7, dilation: int | Sequence[int] = 1,
                 is_causal: bool | Sequence[bool] = False, dims: int = 1,
                 spatial: Sequence[int] | None = None) -> torch.Tensor:
    """Reference NA: dense mask from the predicate + masked softmax.

    Args:
        q: `[B, Hq, N, D]`; k, v: `[B, Hkv, N, D]`, N = prod(spatial).
        kernel_size, dilation, is_causal: one value or one per axis.
        dims: grid rank when `spatial` is not given (square/cubic grid of N).
    Returns:
        `[B, Hq, N, D]`.
    """
    cfg = na_config(q.shape[-2], causal, {"kernel_size": kernel_size, "dilation": dilation,
                                          "is_causal": is_causal, "dims": dims}, spatial)
    if (why := cfg.problem()) is not None:
        raise ValueError(why)
    mask = na_mask(cfg, q.device)
    density.record_mask(mask, causal=causal, batch=q.shape[0], heads=q.shape[1])
    return dense_attention(q, k, v, mask)
