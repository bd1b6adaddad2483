"""Verdicts: match BASE and HEAD rows by case and metric, and judge each pair by its declared meaning."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import pandas as pd

from attnbench.gate.load import GateInputError, env_mismatch, load_side, side_label
from attnbench.gate.model import Comparison, Entry
from attnbench.gate.stats import paired, paired_factor, side, significance
from attnbench.metrics import DENSE_BASELINE, Direction, MetricSpec, MetricTable, metric_table

FAILED = {"wrong", "oom", "error", "timeout", "unsupported"}

Ident = tuple[str, str, str, str]  # suite, method, backend, workload


@dataclass(frozen=True, eq=False)
class Options:
    """How to compare: the worse-factor threshold, the significance level, and the baseline.

    `bscale`/`hscale` (per row of each side: the same run's baseline value) are set when the
    sides come from different machines or libraries; timings are then compared as ratios to them.
    """

    threshold: float = 1.10
    alpha: float = 0.05
    baseline: str = DENSE_BASELINE
    bscale: pd.Series | None = None
    hscale: pd.Series | None = None
    allow_vanished: bool = False

    @property
    def normalised(self) -> bool:
        return self.bscale is not None


def compare(
    base: Sequence[str | os.PathLike[str]],
    head: Sequence[str | os.PathLike[str]],
    *,
    threshold: float = 1.10,
    alpha: float = 0.05,
    baseline: str = DENSE_BASELINE,
    allow_vanished: bool = False,
) -> Comparison:
    """Compare HEAD results with BASE results (folders, Parquet or pytest-benchmark JSON files).

    Every run of a case (from the same git sha as its latest run) counts as a replicate.
    `allow_vanished`: base cases missing from HEAD do not fail it (see `Comparison.exit_code`).

    Raises:
        GateInputError: a side is missing, unreadable, empty, or the options are invalid.
    """
    if threshold < 1:
        raise GateInputError(f"threshold is a factor ≥ 1, got {threshold}")
    if not 0 < alpha < 1:
        raise GateInputError(f"alpha must be in (0, 1), got {alpha}")
    b, h = load_side(base, "base"), load_side(head, "head")
    cmp = compare_frames(b, h, Options(threshold, alpha, baseline, allow_vanished=allow_vanished), metric_table())
    cmp.base_label, cmp.head_label = side_label(b, base), side_label(h, head)
    return cmp


def baseline_scale(df: pd.DataFrame, baseline: str) -> pd.Series:
    """For each row, the same run's `baseline` value of the same suite/workload/metric (NaN if none)."""
    method, _, backend = baseline.partition("/")
    cols = ["run_id", "suite", "workload_id", "metric", "stat", "seq_len"]
    ref = df[(df["method"] == method) & (df["backend"] == backend) & (df["status"] == "ok")]
    ref = ref.groupby(cols, dropna=False)["value"].first().rename("_scale").reset_index()
    merged = df[cols].merge(ref, on=cols, how="left")
    return pd.Series(merged["_scale"].to_numpy(), index=df.index)


def case_status(rows: pd.DataFrame) -> tuple[str, str]:
    """The case's status (a failure wins over other non-ok statuses) and its error."""
    bad = rows[rows["status"] != "ok"]
    if bad.empty:
        return "ok", ""
    failed = bad[bad["status"].isin(FAILED)]
    pick = failed.iloc[-1] if len(failed) else bad.iloc[-1]
    return str(pick["status"]), str(pick["error"] or "")


def compare_frames(base: pd.DataFrame, head: pd.DataFrame, opts: Options, table: MetricTable) -> Comparison:
    """Compare loaded sides; `opts` scales are filled in here when the environments differ."""
    warnings: list[str] = []
    baseline = opts.baseline
    mismatch = env_mismatch(base, head)
    if mismatch:
        warnings.append(
            "machine/library mismatch (" + "; ".join(mismatch) + f"): timings are compared as "
            f"ratios to {baseline} measured in the same run"
        )
        if not ((base["method"] + "/" + base["backend"]) == baseline).any():
            warnings.append(f"baseline {baseline} is absent from base: timings cannot be compared")
        opts = replace(opts, bscale=baseline_scale(base, baseline), hscale=baseline_scale(head, baseline))
    elif base["device_name"].nunique() > 1:
        base = base.assign(key=base["key"] + "|" + base["device_name"].astype(str))
        head = head.assign(key=head["key"] + "|" + head["device_name"].astype(str))

    entries: list[Entry] = []
    b_cases, h_cases = set(base["case_id"]), set(head["case_id"])
    for where, cases, df, verdict in (
        ("base", b_cases - h_cases, base, "vanished"),
        ("head", h_cases - b_cases, head, "new"),
    ):
        for cid in sorted(cases):
            r = df[df["case_id"] == cid].iloc[0]
            ident = (r["suite"], r["method"], r["backend"], str(r["workload_id"]))
            entries.append(Entry(verdict, *ident, "*", note=f"case {cid} only in {where}"))
    common = b_cases & h_cases
    bg = {k: g for k, g in base[base["case_id"].isin(common)].groupby("case_id")}
    hg = {k: g for k, g in head[head["case_id"].isin(common)].groupby("case_id")}
    for cid in sorted(common):
        brows, hrows = bg[cid], hg[cid]
        first = hrows.iloc[0]
        ident = (first["suite"], first["method"], first["backend"], str(first["workload_id"]))
        bstat, _ = case_status(brows)
        hstat, herr = case_status(hrows)
        if bstat == "ok" and hstat in FAILED:
            entries.append(Entry("failed", *ident, "status", note=f"ok → {hstat}: {herr}"[:300]))
        elif bstat in FAILED and hstat == "ok":
            entries.append(Entry("fixed", *ident, "status", note=f"{bstat} → ok"))
        elif bstat != "ok" and hstat != "ok":
            entries.append(Entry("still_failing", *ident, "status", note=f"{bstat} → {hstat}"))
        elif hstat != "ok":  # ok → a status that is no failure (e.g. skipped)
            warnings.append(f"{ident[0]}: {ident[1]}/{ident[2]} {ident[3]} was ok, now {hstat}")
        else:
            bkeys = {k: g for k, g in brows.groupby("key")}
            for key, hk in hrows.groupby("key"):
                metric = str(hk["metric"].iloc[0])
                spec = table.get(metric)
                if spec is None or not spec.gated or key not in bkeys:
                    continue
                entries.append(compare_metric(bkeys[key], hk, ident, metric, spec, opts))
    undeclared = sorted({str(m) for m in (*base["metric"], *head["metric"]) if table.get(str(m)) is None})
    if undeclared:
        warnings.append(f"not gated, declared by no suite: {', '.join(undeclared)}")
    return Comparison(entries, warnings, opts.threshold, opts.alpha, opts.normalised, baseline,
                      allow_vanished=opts.allow_vanished)


def compare_metric(
    brows: pd.DataFrame, hrows: pd.DataFrame, ident: Ident, metric: str, spec: MetricSpec, opts: Options
) -> Entry:
    """The verdict on one gated (case, metric): worse by more than the threshold and significantly so?

    Args:
        brows, hrows: the metric's rows of the case on each side (one per run).
        ident: the case's suite, method, backend and workload.
        metric: the metric's name (`spec` may be a pattern's).
        spec: the metric's declared meaning; its direction must not be None.
        opts: threshold, alpha, baseline and (machine mismatch) the baseline scales.
    """
    lower = spec.direction == Direction.LOWER
    relative = spec.timed and opts.bscale is not None and not spec.same_run_ratio
    note = ""
    bs = hs = None
    if relative:
        if f"{ident[1]}/{ident[2]}" == opts.baseline:
            return Entry("untested", *ident, metric, note="the baseline itself (ratios are 1)")
        bs, hs = opts.bscale.loc[brows.index], opts.hscale.loc[hrows.index]  # type: ignore[union-attr]
        if bs.isna().all() or hs.isna().all():
            return Entry("untested", *ident, metric, note=f"no same-run {opts.baseline} to normalise by")
        brows, hrows, bs, hs = brows[bs.notna()], hrows[hs.notna()], bs.dropna(), hs.dropna()
        note = f"ratio to {opts.baseline}"
    b, h = side(brows, bs), side(hrows, hs)
    if b is None or h is None:
        return Entry("untested", *ident, metric, note="no ok value on one side")
    bc, hc = b.center, h.center
    if paired(b, h):
        ratio = paired_factor(b, h)
        factor = ratio if lower else 1 / ratio
    elif bc <= 0 or hc <= 0:
        factor = 1.0 if bc == hc else float("inf")
    else:
        factor = hc / bc if lower else bc / hc
    if not lower and bc > 0 and hc <= 0:
        factor = float("inf")
    big = factor > opts.threshold and abs(hc - bc) >= spec.floor
    better = factor < 1 / opts.threshold and abs(hc - bc) >= spec.floor
    p, how = significance(b, h, worse_is_higher=lower, timed=spec.timed)
    note = "; ".join(x for x in (note, how) if x)
    if p is None:
        return Entry("untested", *ident, metric, bc, hc, factor, None, note)
    if big:
        verdict = "regression" if p < opts.alpha else "noisy"
    elif better:
        verdict = "improvement" if 1 - p < opts.alpha else "unchanged"
    else:
        verdict = "unchanged"
    return Entry(verdict, *ident, metric, bc, hc, factor, p, note)
