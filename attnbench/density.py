"""Effective density: the fraction of allowed (query, key) pairs a sparse method really attended.

Sparse references report what they attend with `record(...)`; a caller that wants the figure
wraps the evaluation in `with measure() as m:` and reads `m.value` (None when nothing reported,
i.e. a dense method). Recording is a no-op outside `measure()`, so references stay cheap.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

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
