"""Statistics: one side's values per run, and one-sided bootstrap significance of HEAD being worse."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

BOOT = 2000  # bootstrap resamples


@dataclass
class Side:
    """One side's ok values of a (case, metric), one per run (replicate)."""

    values: list[float]  # one reported value (median) per run
    samples: list[np.ndarray]  # per run: raw samples, or the value alone
    spread: list[tuple[float, float] | None]  # per run (p20, p80)

    @property
    def center(self) -> float:
        return float(np.median(self.values))

    @property
    def has_samples(self) -> bool:
        return any(len(s) >= 3 for s in self.samples)


def side(rows: pd.DataFrame, scale: pd.Series | None = None) -> Side | None:
    """The ok rows as a `Side`, each divided by its `scale` (None when no row is ok)."""
    ok = rows[(rows["status"] == "ok") & rows["value"].notna()].sort_values("created_at", kind="stable")
    if ok.empty:
        return None
    values, samples, spread = [], [], []
    for idx, r in ok.iterrows():
        s = 1.0 if scale is None else float(scale.loc[idx])
        v = float(r["value"]) / s
        raw = r["samples"]
        arr = np.asarray(raw, dtype=float) / s if raw is not None and len(raw) else np.asarray([v])
        values.append(v)
        samples.append(arr[np.isfinite(arr)] if np.isfinite(arr).any() else np.asarray([v]))
        has = pd.notna(r["p20"]) and pd.notna(r["p80"])
        spread.append((float(r["p20"]) / s, float(r["p80"]) / s) if has else None)
    return Side(values, samples, spread)


def _boot_rounds(s: Side, rng: np.random.Generator) -> np.ndarray:
    """`[runs, B]` bootstrap medians of each run's samples."""
    out = np.empty((len(s.samples), BOOT))
    for i, x in enumerate(s.samples):
        out[i] = np.median(x[rng.integers(0, len(x), (BOOT, len(x)))], axis=1) if len(x) > 1 else x[0]
    return out


def _boot_centers(s: Side, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap distribution of the side's center: resample runs, then each run's samples."""
    meds = _boot_rounds(s, rng)
    if len(s.samples) == 1:
        return meds[0]
    pick = rng.integers(0, len(s.samples), (BOOT, len(s.samples)))
    return np.median(meds[pick, np.arange(BOOT)[:, None]], axis=1)


def paired(base: Side, head: Side) -> bool:
    """Replicated on both sides the same number of times (A/B rounds): the i-th runs form a pair."""
    n = len(base.values)
    return n >= 2 and n == len(head.values) and min(base.values + head.values) > 0


def paired_factor(base: Side, head: Side) -> float:
    """Geometric mean over rounds of head/base (the higher-is-worse ratio)."""
    return float(np.exp(np.mean(np.log(np.asarray(head.values) / np.asarray(base.values)))))


def significance(base: Side, head: Side, worse_is_higher: bool, timed: bool) -> tuple[float | None, str]:
    """One-sided p-value that HEAD is worse than BASE, and how it was obtained (None: untestable).

    Paired rounds: resample rounds (keeping pairs), then samples within each run, and test the
    mean log ratio; so a difference must hold across rounds, while drift between rounds cancels.
    """
    rng = np.random.default_rng(0)
    if timed and not (base.has_samples and head.has_samples):
        # setup time, TFLOP/s, speedups: one number per run, derived from or as noisy as latency;
        # runs alone do not sample the noise within a run, so only latency-like samples are gated
        return None, "timing without samples"
    if paired(base, head):
        d = np.log(_boot_rounds(head, rng) / _boot_rounds(base, rng))  # [rounds, B]
        pick = rng.integers(0, d.shape[0], (BOOT, d.shape[0]))
        mean = d[pick, np.arange(BOOT)[:, None]].mean(axis=1)
        better_or_same = mean <= 0 if worse_is_higher else mean >= 0
        return float(np.mean(better_or_same)), f"paired bootstrap, {d.shape[0]} rounds"
    replicated = len(base.values) > 1 and len(head.values) > 1
    if base.has_samples or head.has_samples or not timed:
        b, h = _boot_centers(base, rng), _boot_centers(head, rng)
        better_or_same = (h <= b) if worse_is_higher else (h >= b)
        test = "bootstrap" if (base.has_samples or head.has_samples or replicated) else "exact"
        return float(np.mean(better_or_same)), test
    bs, hs = base.spread[0], head.spread[0]
    if bs is None or hs is None:
        return None, "no samples or spread"
    disjoint = hs[0] > bs[1] if worse_is_higher else hs[1] < bs[0]
    return (0.0 if disjoint else 1.0), "p20–p80 overlap"
