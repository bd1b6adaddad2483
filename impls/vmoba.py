"""VMoBA — "Mixture-of-Block Attention for Video Diffusion Models" (Wu et al., 2025), arXiv 2506.23858.

Non-causal MoBA over a `(t, h, w)` token grid. A partition (1-D: chunks of whole frames, 2-D:
spatial tiles over all frames, 3-D: space-time cubes) is a token permutation followed by 1-D
chunking; a query attends to its own block plus blocks chosen by top-k or by a cumulative
threshold, per query-head (`query_head`), per head over all queries (`head_global`) or over all
heads (`overall`). As in MoBA, top-k counts the own block (k = 1 is block-diagonal).

`block` = (ct, ch, cw) chunk sizes: "1d" uses ct (frames per block), "2d" uses (ch, cw) with all
frames, "3d" all three. Without `spatial`, `adapt` picks a grid (`default_grid`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from attnbench import density
from attnbench.flops import mask_flops
from attnbench.impls.moba import block_means
from attnbench.inputs import make_qkv
from attnbench.ops import dense_attention
from attnbench.registry import register_method
from attnbench.spec import AttentionSpec, Capabilities, FlopCount, Paper, Params, Workload

PARTITIONS = ("1d", "2d", "3d")
SELECT_MODES = ("topk", "threshold")
THRESHOLD_TYPES = ("query_head", "head_global", "overall")


def default_grid(n: int) -> tuple[int, int, int]:
    """A video-like `(t, h, w)` with t·h·w = n: t ∈ {4, 2, 1}, h the largest divisor ≤ √(n/t)."""
    t = next(t for t in (4, 2, 1) if n % t == 0 and n // t >= 16 or t == 1)
    hw = n // t
    h = max(d for d in range(1, math.isqrt(hw) + 1) if hw % d == 0)
    return t, h, hw // h


def as_grid(n: int, spatial: Sequence[int] | None) -> tuple[int, int, int]:
    """`(t, h, w)` from a 1/2/3-D spatial shape (or the default grid when None)."""
    if spatial is None:
        return default_grid(n)
    s = tuple(int(x) for x in spatial)
    return (1,) * (3 - len(s)) + s  # type: ignore[return-value]


def chunk_sizes(grid: tuple[int, int, int], partition: str, block: Sequence[int]) -> tuple[int, int, int]:
    """(ct, ch, cw) actually used by a partition, each clamped to the grid."""
    if partition not in PARTITIONS:
        raise ValueError(f"unknown partition {partition!r}; valid: {', '.join(PARTITIONS)}")
    t, h, w = grid
    ct, ch, cw = (min(c, g) for c, g in zip(block, grid, strict=True))
    return {"1d": (ct, h, w), "2d": (t, ch, cw), "3d": (ct, ch, cw)}[partition]


def partition_perm(grid: tuple[int, int, int], chunks: tuple[int, int, int],
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """Token order `[N]` making each (ct, ch, cw) cube contiguous.

    (nt ct nh ch nw cw) → (nt nh nw ct ch cw).
    """
    (t, h, w), (ct, ch, cw) = grid, chunks
    idx = torch.arange(t * h * w, device=device).view(t // ct, ct, h // ch, ch, w // cw, cw)
    return idx.permute(0, 2, 4, 1, 3, 5).reshape(-1)


def _check(w: Workload, p: Params) -> str | None:
    grid = as_grid(w.seq_q, w.spatial)
    chunks = chunk_sizes(grid, p["partition"], p["block"])
    if any(g % c for g, c in zip(grid, chunks, strict=True)):
        return f"grid {grid} is not divisible by the {p['partition']} chunks {chunks}"
    if p["select_mode"] not in SELECT_MODES or p["threshold_type"] not in THRESHOLD_TYPES:
        return f"select_mode in {SELECT_MODES}, threshold_type in {THRESHOLD_TYPES}"
    return None if w.seq_q == w.seq_kv else "vmoba needs seq_q == seq_kv"


def _select_topk(gate: torch.Tensor, topk: int, scope: str) -> torch.Tensor:
    b, h, n, nblk = gate.shape
    if scope == "query_head":
        top = gate.topk(min(topk, nblk), dim=-1).indices
        return torch.zeros_like(gate, dtype=torch.bool).scatter_(-1, top, True)
    flat = gate.flatten(2) if scope == "head_global" else gate.flatten(1)
    top = flat.topk(min(topk * n * (1 if scope == "head_global" else h), flat.shape[-1]), dim=-1).indices
    return torch.zeros_like(flat, dtype=torch.bool).scatter_(-1, top, True).view_as(gate)


def _select_threshold(gate: torch.Tensor, own: torch.Tensor, tau: float, scope: str) -> torch.Tensor:
    """Own block first, then blocks by descending min–max-normalised score until mass ≥ τ·total."""
    if tau >= 1:
        return torch.ones_like(gate, dtype=torch.bool)
    dims = {"query_head": (-1,), "head_global": (-2, -1), "overall": (-3, -2, -1)}[scope]
    lo, hi = gate.amin(dim=dims, keepdim=True), gate.amax(dim=dims, keepdim=True)
    g = (gate - lo) / (hi - lo).clamp_min(1e-12)
    if scope == "query_head":
        g_flat, own_flat = g, own
    else:  # (query, block) entries of a head, or of all heads, compete together
        g_flat, own_flat = g.flatten(-len(dims)), own.flatten(-len(dims))
    total = g_flat.sum(-1, keepdim=True)
    start = (g_flat * own_flat).sum(-1, keepdim=True)
    others = g_flat.masked_fill(own_flat, float("-inf"))
    order = others.argsort(dim=-1, descending=True, stable=True)
    sorted_g = others.gather(-1, order).clamp_min(0.0)
    before = start + sorted_g.cumsum(-1) - sorted_g  # mass before adding each candidate
    take = (before < tau * total) & (others.gather(-1, order) > float("-inf"))
    keep = torch.zeros_like(take).scatter_(-1, order, take) | own_flat
    return keep.view_as(gate)


def vmoba_route(q: torch.Tensor, k: torch.Tensor, *, grid: tuple[int, int, int], partition: str,
                block: Sequence[int], select_mode: str, topk: int, threshold: float,
                threshold_type: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Router in permuted order.

    Returns:
        perm `[N]` (attend in order q[..., perm, :]), sel `[B, H, N, n_blocks]` bool over permuted
        queries (own block always in), and the block size ct·ch·cw.
    """
    chunks = chunk_sizes(grid, partition, block)
    perm = partition_perm(grid, chunks, q.device)
    bs = math.prod(chunks)
    qp, kp = q[:, :, perm], k[:, :, perm]
    gate = qp.float() @ block_means(kp, bs).transpose(-1, -2)  # [B, H, N, nblk]
    n, nblk = gate.shape[-2:]
    own = (torch.arange(n, device=q.device)[:, None] // bs) == torch.arange(nblk, device=q.device)
    own = own.expand_as(gate)
    if select_mode == "topk":
        sel = _select_topk(gate.masked_fill(own, float("inf")), topk, threshold_type)  # k counts own block
    elif select_mode == "threshold":
        sel = _select_threshold(gate, own, threshold, threshold_type)
    else:
        raise ValueError(f"unknown select_mode {select_mode!r}; valid: {', '.join(SELECT_MODES)}")
    return perm, sel, bs


def vmoba_mask(perm: torch.Tensor, sel: torch.Tensor, bs: int) -> torch.Tensor:
    """Token mask `[B, H, N, N]` in the original token order."""
    n = perm.shape[0]
    inv = torch.argsort(perm)
    cols = torch.arange(n, device=sel.device) // bs
    return sel[..., cols][:, :, inv][..., inv]


def _route_params(n: int, spatial: Sequence[int] | None, p: Params) -> dict:
    keys = ("partition", "block", "select_mode", "topk", "threshold", "threshold_type")
    return {"grid": as_grid(n, spatial), **{key: p[key] for key in keys}}


def _flops(w: Workload, params: Params) -> FlopCount:
    """From the routing of a seeded random input of `w` (make_qkv seed 0).

    Tiles (128×128) are counted in permuted order, the order the fused kernels attend in; the
    router is in useful and executed.
    """
    from attnbench.flops import block_routing_flops, with_routing

    q, k, _ = make_qkv(w.replace(dtype="float32"), seed=0, device="cpu")
    _, sel, bs = vmoba_route(q, k, **_route_params(w.seq_q, w.spatial, params))
    routing = block_routing_flops(w, bs)  # block means, gate scores, selection: input-dependent
    return with_routing(mask_flops(w, sel[..., torch.arange(w.seq_kv) // bs]), routing)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def at_density(w: Workload, target: float, params: Params) -> dict:
    """Partition, block and top-k (per query-head) attending `target` of the pairs, within one block.

    Top-k selection makes the density exact whatever the input: k of the N/bs blocks. Every chunking
    of the grid that divides it is a candidate (the method's own partition first); the one with about
    16 blocks and k ≥ 2 within half a block of the target wins (`attnbench.density.pick`)."""
    grid = as_grid(w.seq_q, w.spatial)
    n = math.prod(grid)
    order = [params["partition"], *(p for p in PARTITIONS if p != params["partition"])]
    seen, choices = set(), []
    for part in order:
        axes = {"1d": (0,), "2d": (1, 2), "3d": (0, 1, 2)}[part]
        options = [_divisors(g) if ax in axes else [g] for ax, g in enumerate(grid)]
        for chunks in ((a, b, c) for a in options[0] for b in options[1] for c in options[2]):
            if chunks in seen:
                continue
            seen.add(chunks)
            nblk = n // math.prod(chunks)
            for k in range(1, nblk + 1):
                choices.append(density.Choice(
                    {"partition": part, "block": list(chunks), "select_mode": "topk", "topk": k,
                     "threshold_type": "query_head"},
                    k / nblk, 1 / nblk, routed=2 <= k < nblk, blocks=nblk))
    return density.pick(choices, target)


SPEC = AttentionSpec(
    name="vmoba",
    title="Video mixture of block attention (VMoBA)",
    paper=Paper("VMoBA: Mixture-of-Block Attention for Video Diffusion Models", 2025, "2506.23858"),
    family="sparse-dynamic",
    defaults={"partition": "3d", "block": (2, 8, 8), "select_mode": "threshold", "topk": 3,
              "threshold": 0.25, "threshold_type": "query_head"},
    capabilities=Capabilities(causal=False, noncausal=True, dims=(1, 2, 3)),
    flops=_flops,
    adapt=lambda w, p: w if w.spatial else w.replace(spatial=default_grid(w.seq_q)),
    check=_check,
    at_density=at_density,
    claims=("Training: 2.92× FLOPs and 1.48× latency speedup at ~55K tokens, equal or better quality.",
            "Training-free: 2.40× FLOPs and 1.35× latency speedup."),
)


@register_method(SPEC)
def vmoba(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
          partition: str = "3d", block: Sequence[int] = (2, 8, 8), select_mode: str = "threshold",
          topk: int = 3, threshold: float = 0.25, threshold_type: str = "query_head",
          spatial: Sequence[int] | None = None) -> torch.Tensor:
    """Dense masked softmax with the VMoBA mask mapped back to token order; `[B, H, N, D]` in and out."""
    if causal:
        raise ValueError("vmoba is non-causal")
    params = dict(partition=partition, block=block, select_mode=select_mode, topk=topk,
                  threshold=threshold, threshold_type=threshold_type)
    perm, sel, bs = vmoba_route(q, k, **_route_params(q.shape[2], spatial, params))
    mask = vmoba_mask(perm, sel, bs)
    density.record_mask(mask, causal=False)
    return dense_attention(q, k, v, mask)
