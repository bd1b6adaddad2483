"""PAROAttention — "Pattern-Aware ReOrdering for Efficient Sparse and Quantized Attention in Visual
Generation Models" (Zhao et al., 2025), arXiv 2506.16054.

Per head, the `(F, H, W)` tokens are reordered by one of the 6 axis permutations, chosen by a
calibration pass so that the head's attention pattern becomes block-local; a static block-sparse
mask at a target density then skips blocks, and the kept blocks may use INT8/INT4 `QKᵀ` and `PV`.

Calibrated, then frozen: the permutation and the block mask come from a separate calibration
batch (`calib_seed`: seeded q, k of the evaluated shape, batch 1, drawn on CPU; it stands for the
offline calibration prompt), computed once, cached, and applied unchanged to every evaluated
input — never calibrated on the input it evaluates. The permutation score is the fraction of
`block`×`block` blocks needed to cover `coverage` of the attention mass (fewer is better).
Diagnostics on the evaluated input: `mask_recall` (attention mass the frozen mask keeps) and
the quantisation-incoherence score (mean max/mean of |P| over the kept blocks; 1 = flat).
Quantisation is fake (quantise-dequantise, symmetric, one scale per block): it measures
accuracy, not the speed of real INT4 mma.
Defaults are the unquantised path (`qk_bits = pv_bits = 0`); the paper's recipe is qk 8 / pv 4.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import torch

from attnbench.execute import register_diagnostics
from attnbench.flops import SOFTMAX_FLOPS_PER_SCORE
from attnbench.impls.vmoba import as_grid, default_grid
from attnbench.ops import dense_attention
from attnbench.registry import register_method
from attnbench.spec import AttentionSpec, Capabilities, FlopCount, Paper, Params, Workload

AXIS_PERMUTATIONS: tuple[tuple[int, int, int], ...] = tuple(itertools.permutations(range(3)))  # of (F, H, W)


def axis_orders(grid: tuple[int, int, int], device: torch.device | str = "cpu") -> torch.Tensor:
    """`[6, N]`: token order of each axis permutation of the (F, H, W) grid (row 0 = identity)."""
    idx = torch.arange(math.prod(grid), device=device).view(grid)
    return torch.stack([idx.permute(p).reshape(-1) for p in AXIS_PERMUTATIONS])


def permute_heads(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """`x[b, h, perm[h, i]]` for `x [B, H, N, D]`, `perm [H, N]`."""
    return x.gather(2, perm[None, :, :, None].expand(x.shape[0], -1, -1, x.shape[3]))


def block_mass(p: torch.Tensor, block: int) -> torch.Tensor:
    """Sum of `p [..., N, N]` over `block`×`block` tiles → `[..., N/block, N/block]`."""
    return p.unflatten(-1, (-1, block)).unflatten(-3, (-1, block)).sum(dim=(-3, -1))


def _probs(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Batch-averaged full attention map `[H, N, N]`, fp32."""
    s = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    return torch.softmax(s, dim=-1).mean(0)


def n_kept_blocks(nb: int, density: float) -> int:
    """Blocks kept per head: round(density·nb²), at least one per block row."""
    return min(nb * nb, max(nb, round(density * nb * nb)))


def paro_plan(q: torch.Tensor, k: torch.Tensor, *, grid: tuple[int, int, int], block: int, density: float,
              coverage: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibration pass: per-head token order `[H, N]` and static block mask `[H, nb, nb]` (bool).

    Each head takes the axis permutation whose map needs the fewest blocks to cover `coverage` of
    the mass; its mask keeps each block row's heaviest block, then the heaviest blocks overall,
    `n_kept_blocks` in total.
    """
    probs = _probs(q, k)  # [H, N, N]
    h, n, _ = probs.shape
    orders = axis_orders(grid, q.device)
    needed = []
    for order in orders:
        mass = block_mass(probs[:, order][:, :, order], block).flatten(1) / n
        cum = mass.sort(dim=-1, descending=True).values.cumsum(-1)
        needed.append((cum < coverage).sum(-1))
    perm = orders[torch.stack(needed, dim=-1).argmin(-1)]  # [H, N]; ties → first (identity)
    rows = probs.gather(1, perm[:, :, None].expand(-1, -1, n))
    permuted = rows.gather(2, perm[:, None, :].expand(-1, n, -1))
    mass = block_mass(permuted, block)  # [H, nb, nb]
    nb = mass.shape[-1]
    rowmax = torch.zeros_like(mass, dtype=torch.bool).scatter_(-1, mass.argmax(-1, keepdim=True), True)
    rank = mass.masked_fill(rowmax, float("inf")).flatten(1).argsort(dim=-1, descending=True, stable=True)
    keep = torch.zeros(h, nb * nb, dtype=torch.bool, device=q.device)
    keep.scatter_(-1, rank[:, :n_kept_blocks(nb, density)], True)
    return perm, keep.view(h, nb, nb)


@functools.lru_cache(maxsize=16)
def _calibrated(heads: int, n: int, d: int, grid: tuple[int, int, int], block: int, density: float,
                coverage: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    qc, kc = (torch.randn(1, heads, n, d, generator=gen) for _ in range(2))
    return paro_plan(qc, kc, grid=grid, block=block, density=density, coverage=coverage)


def calibrated_plan(heads: int, n: int, d: int, *, grid: tuple[int, int, int], block: int, density: float,
                    coverage: float, calib_seed: int, device: torch.device | str = "cpu"
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen (perm `[H, N]`, block mask `[H, nb, nb]`) from the seeded calibration batch."""
    perm, mblk = _calibrated(heads, n, d, tuple(grid), block, float(density), float(coverage), int(calib_seed))
    return perm.to(device), mblk.to(device)


def mask_recall(q: torch.Tensor, k: torch.Tensor, perm: torch.Tensor, mblk: torch.Tensor, block: int) -> float:
    """Mean over (batch, head, query) of the full-attention mass of the evaluated input that the
    frozen block mask keeps (1 = the mask misses nothing)."""
    qp, kp = permute_heads(q.float(), perm), permute_heads(k.float(), perm)
    p = torch.softmax((qp @ kp.transpose(-1, -2)) * q.shape[-1] ** -0.5, dim=-1)
    return float((p * token_mask(mblk, block)).sum(-1).mean())


def incoherence(q: torch.Tensor, k: torch.Tensor, perm: torch.Tensor, mblk: torch.Tensor, block: int) -> float:
    """PARO's quantisation metric on the evaluated input: max/mean of |P| per kept block, averaged
    (the fake-quant error of a block grows with it)."""
    qp, kp = permute_heads(q.float(), perm), permute_heads(k.float(), perm)
    p = torch.softmax((qp @ kp.transpose(-1, -2)) * q.shape[-1] ** -0.5, dim=-1)
    t = p.unflatten(-1, (-1, block)).unflatten(-3, (-1, block))  # [B, H, nb, block, nb, block]
    ratio = t.amax(dim=(-3, -1)) / t.mean(dim=(-3, -1)).clamp_min(1e-30)  # [B, H, nb, nb]
    return float(ratio[mblk.expand_as(ratio)].mean())


def fake_quant(x: torch.Tensor, bits: int, rows: int, cols: int | None = None) -> torch.Tensor:
    """Symmetric per-tile fake quantisation of `x [..., R, C]` with `rows`×`cols` tiles (cols=None: all C)."""
    if not bits:
        return x
    qmax = 2 ** (bits - 1) - 1
    cols = cols or x.shape[-1]
    t = x.unflatten(-1, (-1, cols)).unflatten(-3, (-1, rows))  # [..., R/rows, rows, C/cols, cols]
    scale = t.abs().amax(dim=(-3, -1), keepdim=True).clamp_min(1e-12) / qmax
    return (torch.round(t / scale).clamp(-qmax, qmax) * scale).flatten(-2).flatten(-3, -2)


def token_mask(mblk: torch.Tensor, block: int) -> torch.Tensor:
    """Block mask `[H, nb, nb]` → token mask `[H, N, N]`."""
    return mblk.repeat_interleave(block, dim=-1).repeat_interleave(block, dim=-2)


def _check(w: Workload, p: Params) -> str | None:
    if w.seq_q != w.seq_kv:
        return "paro needs seq_q == seq_kv"
    if w.seq_q % p["block"]:
        return f"seq_len {w.seq_q} is not a multiple of block {p['block']}"
    if p["qk_bits"] not in (0, 4, 8) or p["pv_bits"] not in (0, 4, 8):
        return "qk_bits / pv_bits must be 0 (off), 4 or 8"
    return None


def _flops(w: Workload, params: Params) -> FlopCount:
    """Exact without inputs: every head keeps `n_kept_blocks` full blocks of block² pairs."""
    nb = w.seq_q // params["block"]
    pairs = n_kept_blocks(nb, params["density"]) * params["block"] ** 2
    useful = 4.0 * w.batch * w.heads_q * pairs * w.head_dim
    return FlopCount(useful=useful, executed=useful,
                     softmax=SOFTMAX_FLOPS_PER_SCORE * w.batch * w.heads_q * pairs)


SPEC = AttentionSpec(
    name="paro",
    title="PAROAttention (pattern-aware reordering)",
    paper=Paper("PAROAttention: Pattern-Aware ReOrdering for Efficient Sparse and Quantized Attention "
                "in Visual Generation Models", 2025, "2506.16054"),
    family="sparse-static",
    defaults={"density": 0.25, "block": 64, "qk_bits": 0, "pv_bits": 0, "coverage": 0.9, "calib_seed": 1234},
    capabilities=Capabilities(causal=False, noncausal=True, dims=(1, 2, 3)),
    flops=_flops,
    adapt=lambda w, p: w if w.spatial else w.replace(spatial=default_grid(w.seq_q)),
    check=_check,
    claims=("Metrics near lossless at 20–30% density with INT8/INT4; 1.9–2.7× end-to-end speedup.",),
)


def sparse_quant_attention(qp: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor, mblk: torch.Tensor, *,
                           block: int, qk_bits: int, pv_bits: int) -> torch.Tensor:
    """Block-masked attention on permuted tensors with per-block fake quantisation of Q, K, P, V.

    qp, kp, vp: `[B, H, N, D]` permuted; mblk `[H, nb, nb]`. fp32 math; returns fp32.
    """
    acc = torch.float64 if qp.dtype == torch.float64 else torch.float32
    qp, kp, vp = (fake_quant(t.to(acc), b, block) for t, b in ((qp, qk_bits), (kp, qk_bits), (vp, pv_bits)))
    s = (qp @ kp.transpose(-1, -2)) * qp.shape[-1] ** -0.5
    p = torch.softmax(s.masked_fill(~token_mask(mblk, block), float("-inf")), dim=-1)
    return fake_quant(p, pv_bits, block, block) @ vp


def frozen_plan(q: torch.Tensor, *, block: int, density: float, coverage: float, calib_seed: int,
                spatial: Sequence[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The calibrated plan for q's shape (input-independent: only shapes and params are read)."""
    _, h, n, d = q.shape
    return calibrated_plan(h, n, d, grid=as_grid(n, spatial), block=block, density=density, coverage=coverage,
                           calib_seed=calib_seed, device=q.device)


@register_method(SPEC)
def paro(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, density: float = 0.25,
         block: int = 64, qk_bits: int = 0, pv_bits: int = 0, coverage: float = 0.9, calib_seed: int = 1234,
         spatial: Sequence[int] | None = None) -> torch.Tensor:
    """Frozen calibrated plan, permute per head, block-masked (fake-quantised) attention, un-permute.
    `[B, H, N, D]`; the plan comes from the `calib_seed` calibration batch, never from q, k."""
    if causal:
        raise ValueError("paro is non-causal")
    perm, mblk = frozen_plan(q, block=block, density=density, coverage=coverage, calib_seed=calib_seed,
                             spatial=spatial)
    qp, kp, vp = (permute_heads(t, perm) for t in (q, k, v))
    o = sparse_quant_attention(qp, kp, vp, mblk, block=block, qk_bits=qk_bits, pv_bits=pv_bits)
    return permute_heads(o, torch.argsort(perm, dim=-1)).to(q.dtype)


def paro_error(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: Params | None = None, *,
               spatial: Sequence[int] | None = None) -> dict[str, float]:
    """Error PARO introduces vs full attention: relative Frobenius error and max abs error.

    Reports the sparse-only error, the error with the configured quantisation, and the realised
    block density. `params` override PARO's defaults.
    """
    p = SPEC.params(params)
    full = dense_attention(q.float(), k.float(), v.float())
    sparse = paro(q.float(), k.float(), v.float(), **{**p, "qk_bits": 0, "pv_bits": 0}, spatial=spatial)
    quant = paro(q.float(), k.float(), v.float(), **p, spatial=spatial)
    perm, mblk = frozen_plan(q, block=p["block"], density=p["density"], coverage=p["coverage"],
                             calib_seed=p["calib_seed"], spatial=spatial)

    def rel(o: torch.Tensor) -> float:
        return float((o - full).norm() / full.norm())

    return {"rel_err_sparse": rel(sparse), "rel_err": rel(quant),
            "max_abs_err": float((quant - full).abs().max()), "density": float(mblk.float().mean()),
            "mask_recall": mask_recall(q, k, perm, mblk, p["block"]),
            "incoherence": incoherence(q, k, perm, mblk, p["block"])}


def paro_diagnostics(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: Params) -> dict[str, float]:
    """Rows for the suites: mask recall and incoherence of the frozen plan on the evaluated input."""
    p = SPEC.params({key: val for key, val in params.items() if key != "spatial"})
    perm, mblk = frozen_plan(q, block=p["block"], density=p["density"], coverage=p["coverage"],
                             calib_seed=p["calib_seed"], spatial=params.get("spatial"))
    return {"mask_recall": mask_recall(q, k, perm, mblk, p["block"]),
            "incoherence": incoherence(q, k, perm, mblk, p["block"]),
            "calib_seed": float(p["calib_seed"])}


register_diagnostics(SPEC, paro_diagnostics)
