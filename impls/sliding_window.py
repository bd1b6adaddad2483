"""Sliding-window attention — "Longformer: The Long-Document Transformer" (Beltagy et al., 2020),
arXiv 2004.05150; the window convention is FlashAttention-2's `window_size`.

Each query attends to a band of `window` keys around its own position (bottom-right aligned:
query i sits at key position p = i + Nk − Nq, as in FA-2):
- causal: the `window` keys ending at p, `p − window < j ≤ p` (= FA-2 `window_size=(window−1, 0)`;
  attention-gym's `q − kv ≤ w` is `window = w + 1` here);
- non-causal: the symmetric band `|p − j| ≤ window // 2` (= FA-2 `window_size=(window//2, window//2)`),
  i.e. `window` keys on interior rows when `window` is odd and `window + 1` when it is even.
Rows near the edges see fewer keys (no padding, no shifting of the window).
"""

from __future__ import annotations

import torch

from attnbench import density
from attnbench.flops import SOFTMAX_FLOPS_PER_SCORE
from attnbench.ops import dense_attention
from attnbench.ops import dense_kv_cache_bytes as kv_cache_bytes
from attnbench.registry import register_method
from attnbench.spec import AttentionSpec, Capabilities, FlopCount, Paper, Params, Workload

FLEX_BLOCK = (128, 128)  # FlexAttention's default BlockMask tile (executed FLOPs are counted on it)


def window_allows(q_idx: torch.Tensor, kv_idx: torch.Tensor, *, window: int, causal: bool,
                  offset: int) -> torch.Tensor:
    """The window predicate on broadcastable index tensors (also usable as a flex mask_mod body)."""
    d = q_idx + offset - kv_idx
    if causal:
        return (d >= 0) & (d < window)
    return (d <= window // 2) & (d >= -(window // 2))


def window_mask(nq: int, nk: int, *, window: int, causal: bool,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """`[Nq, Nk]` boolean, True where key j is in query i's window."""
    i = torch.arange(nq, device=device)[:, None]
    j = torch.arange(nk, device=device)[None, :]
    return window_allows(i, j, window=window, causal=causal, offset=nk - nq)


def window_mask_mod(w: Workload, params: Params):
    """FlexAttention mask_mod of the window for workload `w`."""
    window, causal, offset = params["window"], w.causal, w.seq_kv - w.seq_q

    def mask_mod(b, h, q_idx, kv_idx):
        return window_allows(q_idx, kv_idx, window=window, causal=causal, offset=offset)

    return mask_mod


def key_ranges(w: Workload, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query row, the first and last visible key (`lo > hi` when the row sees none), `[Nq]`."""
    p = torch.arange(w.seq_q, dtype=torch.int64) + (w.seq_kv - w.seq_q)
    before, after = (window - 1, 0) if w.causal else (window // 2, window // 2)
    return (p - before).clamp(min=0), (p + after).clamp(max=w.seq_kv - 1)


def window_flops(w: Workload, params: Params, *, block: tuple[int, int] = FLEX_BLOCK) -> FlopCount:
    """useful = 4·B·H·D·Σ_i |window_i|; executed = every (Q-tile, KV-tile) a block kernel visits.

    Analytic (O(N), no N×N mask): each row's keys are one contiguous range and the ranges move
    monotonically, so a Q tile visits the KV tiles from its first row's `lo` to its last row's `hi`.
    Matches `attnbench.flops.mask_flops(w, window_mask(...), block=block)`.
    """
    lo, hi = key_ranges(w, params["window"])
    counts = (hi - lo + 1).clamp(min=0)
    bq, bk = block
    tiles = 0
    for start in range(0, w.seq_q, bq):
        rows = counts[start:start + bq] > 0
        if rows.any():
            idx = rows.nonzero().flatten()
            first, last = start + int(idx[0]), start + int(idx[-1])
            tiles += int(hi[last]) // bk - int(lo[first]) // bk + 1
    reps = w.batch * w.heads_q
    pairs = float(counts.sum()) * reps
    return FlopCount(useful=4.0 * pairs * w.head_dim, executed=4.0 * tiles * bq * bk * w.head_dim * reps,
                     softmax=SOFTMAX_FLOPS_PER_SCORE * pairs)


def check_window(w: Workload, params: Params) -> str | None:
    """Why `window` does not fit `w`: it must be an integer in [1, seq_kv]."""
    window = params["window"]
    if not isinstance(window, int) or window < 1:
        return f"sliding_window: window must be a positive integer, got {window!r}"
    if window > w.seq_kv:
        return f"sliding_window: window={window} is larger than the sequence (seq_kv={w.seq_kv})"
    return None


def at_density(w: Workload, target: float, params: Params) -> dict:
    """The window attending `target` of the allowed pairs of `w` (exact counts; one key per step,
    two when non-causal, whose band grows symmetrically)."""
    return density.pick(density.window_choices(w.seq_kv, w.causal), target)


SPEC = AttentionSpec(
    name="sliding_window",
    title="Sliding-window attention",
    paper=Paper("Longformer: The Long-Document Transformer", 2020, "2004.05150"),
    family="sparse-local",
    defaults={"window": 32},
    capabilities=Capabilities(gqa=True),
    flops=window_flops,
    kv_cache_bytes=lambda w, p: kv_cache_bytes(w.replace(seq_kv=min(w.seq_kv, p["window"])), p),
    check=check_window,
    mask_mod=window_mask_mod,
    at_density=at_density,
    claims=("Attention cost linear in sequence length: O(N·w) instead of O(N²).",),
)


@register_method(SPEC)
def sliding_window(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                   window: int = 32) -> torch.Tensor:
    """Reference: dense softmax attention under the N×N window mask.

    Args:
        q: `[B, Hq, Nq, D]`; k, v: `[B, Hkv, Nk, D]` (Hq divisible by Hkv).
        causal: causal window (`window` keys ending at the query) or the symmetric band.
        window: keys per row (see the module docstring for the exact convention).
    Returns:
        `[B, Hq, Nq, D]` in q's dtype; a row with no visible key is 0.
    """
    mask = window_mask(q.shape[-2], k.shape[-2], window=window, causal=causal, device=q.device)
    density.record_mask(mask, causal=causal, batch=q.shape[0], heads=q.shape[1])
    return dense_attention(q, k, v, mask)
