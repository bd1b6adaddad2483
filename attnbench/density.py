"""Effective density: the fraction of allowed (query, key) pairs a sparse method really attended.

Sparse references report what they attend with `record(...)`; a caller that wants the figure
wraps the evaluation in `with measure() as m:` and reads `m.value` (None when nothing reported,
i.e. a dense method). Recording is a no-op outside `measure()`, so references stay cheap.

The second half holds what the methods' `AttentionSpec.at_density` functions share: exact pair
counts (`allowed_pairs`, `window_pairs`), candidate settings with their densities (`Choice`,
`window_choices`, `block_topk_choices`) and `pick`, which chooses one within half a block of the
target; `probe` measures a method's density on a seeded random input (the proxies' ladder uses it
to leave out a paper default that is dense at the task's length).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

_local = threading.local()


@dataclass
class DensityMeter:
    """Attended and allowed pair counts summed over every recorded call."""

    attended: float = 0.0
    allowed: float = 0.0

    @property
    def value(self) -> float | None:
        return self.attended / self.allowed if self.allowed else None


def active() -> bool:
    """Is a `measure()` open on this thread (worth computing a count)?"""
    return bool(getattr(_local, "stack", None))


def record(attended: float, allowed: float) -> None:
    """Add one call's attended pairs and its allowed pairs (causal or full) to every open meter."""
    for meter in getattr(_local, "stack", ()):
        meter.attended += float(attended)
        meter.allowed += float(allowed)


def record_mask(mask: torch.Tensor, *, causal: bool, heads: int = 1, batch: int = 1) -> None:
    """Record a boolean attend-mask `[..., Nq, Nk]`; allowed = causal (bottom-right) or all pairs.

    `batch`/`heads` scale a mask shared across them (leading dims of size 1)."""
    if not active():
        return
    m = mask.bool()
    nq, nk = m.shape[-2:]
    if causal:
        allowed_mask = torch.ones(nq, nk, dtype=torch.bool, device=m.device).tril(nk - nq)
        m = m & allowed_mask
        allowed = float(allowed_mask.sum())
    else:
        allowed = float(nq * nk)
    lead = m.numel() // (nq * nk)
    scale = batch * heads // max(lead, 1) if lead < batch * heads else 1
    record(float(m.sum()) * scale, allowed * lead * scale)


@contextlib.contextmanager
def measure() -> Iterator[DensityMeter]:
    """Collect `record` calls made on this thread inside the block."""
    meter = DensityMeter()
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(meter)
    try:
        yield meter
    finally:
        stack.remove(meter)


# ---- resolving a target density: shared by the methods' `at_density` functions ----------------

def allowed_pairs(nq: int, nk: int, causal: bool) -> float:
    """Pairs a dense method attends: every (q, k), or the bottom-right causal ones."""
    if not causal:
        return float(nq * nk)
    rows = torch.arange(nq, dtype=torch.float64) + (nk - nq) + 1
    return float(rows.clamp(0, nk).sum())


def window_pairs(n: int, window: int, causal: bool) -> float:
    """Pairs of an `n`×`n` sliding window (the `impls/sliding_window` convention), in closed form.

    Causal: row i sees min(i+1, window) keys. Non-causal: the band |i−j| ≤ window//2."""
    if causal:
        w = min(window, n)
        return w * (w + 1) / 2 + (n - w) * w
    h = min(window // 2, n - 1)
    return 2 * (h * (h + 1) / 2 + (n - 1 - h) * h) + n


@dataclass(frozen=True)
class Choice:
    """One candidate setting of a sparse method and the density it attends.

    `step`: the density one step of its coarsest knob moves (one key block, one window key);
    `routed`: a block method that still chooses blocks (top-k ≥ 2), not a fixed block diagonal;
    `blocks`: key blocks per sequence (0 for window methods)."""

    params: dict[str, Any]
    density: float
    step: float
    routed: bool = True
    blocks: int = 0


def pick(choices: Iterable[Choice], target: float, *, ideal_blocks: int = 16) -> dict[str, Any]:
    """The candidate that hits `target` within half a step, routing where possible.

    Among routed candidates within half their step of the target, the one whose block count is
    nearest `ideal_blocks` (a paper-like routing granularity: neither one giant block nor per-token
    routing) wins, then the smaller error; if none is that close, the nearest routed candidate,
    then the nearest of all. Raises ValueError when there is no candidate.
    """
    cands = list(choices)
    if not cands:
        raise ValueError("no candidate setting to choose a density from")
    err = lambda c: abs(c.density - target)  # noqa: E731
    close = [c for c in cands if c.routed and err(c) <= c.step / 2 + 1e-12]
    if close:
        return min(close, key=lambda c: (abs(math.log2(c.blocks / ideal_blocks)) if c.blocks else 0.0,
                                         err(c))).params
    routed = [c for c in cands if c.routed] or cands
    return min(routed, key=err).params


def window_choices(n: int, causal: bool, key: str = "window", *, lo: int = 1) -> list[Choice]:
    """Every window length of an `n`-token sliding window (odd ones when non-causal: the band is
    symmetric, so an even window adds no key) with its exact density."""
    allowed = allowed_pairs(n, n, causal)
    windows = range(lo, n + 1) if causal else range(max(lo, 1) | 1, n + 1, 2)
    per_key = n / allowed
    return [Choice({key: w}, window_pairs(n, w, causal) / allowed, per_key * (1 if causal else 2))
            for w in windows]


def block_topk_choices(n: int, causal: bool, pairs_fn: Callable[[int, int], float], *,
                       block_key: str = "block_size", topk_key: str = "topk",
                       blocks: Iterable[int] | None = None) -> list[Choice]:
    """(block, top-k) candidates of a block-routing method on `n` tokens.

    `pairs_fn(block, k)` gives the pairs attended (one batch·head) with k blocks per query (the own
    block counted); blocks default to powers of two from 1 to n/2."""
    allowed = allowed_pairs(n, n, causal)
    sizes = list(blocks) if blocks is not None else [2 ** i for i in range(int(math.log2(max(n, 2))))]
    out = []
    for b in sizes:
        nblk = -(-n // b)
        if nblk < 2:
            continue
        for k in range(1, nblk + 1):
            out.append(Choice({block_key: b, topk_key: k}, pairs_fn(b, k) / allowed,
                              b * n / allowed, routed=k >= 2 and nblk > k, blocks=nblk))
    return out


def probe(entry: Any, w: Any, params: Mapping[str, Any], *, seed: int = 0) -> float | None:
    """Effective density of one reference forward of `entry` on a seeded random input of `w`
    (batch 1, fp32, forward only); None when the reference records nothing (a dense method).

    Dynamic methods are probed on random input, so this estimates what a trained model attends;
    proxies record the real figure on their evaluation inputs."""
    from attnbench.execute import prepare_call  # lazy: execute imports much of the core
    from attnbench.spec import Backend

    small = w.replace(batch=1, mode="fwd", dtype="float32", device="cpu")
    with torch.no_grad(), measure() as meter:
        prepare_call(entry, Backend.REFERENCE, entry.spec.shape(small, params), params, seed=seed).forward()
    return meter.value
