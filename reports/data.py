"""The report's primitives: merged results → display cells, generic tables, shapes and aggregates.

Everything here is plain data (no HTML): `Cell`s carry the text, a numeric sort key, a CSS class
and a tooltip; the templates escape every string. What a metric means (label, order, direction,
role) comes from `reports.meaning`; unknown metrics and suites get generic tables.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from attnbench.metrics import DENSE_BASELINE
from attnbench.reports.density import GREY, dense_cases
from attnbench.reports.meaning import catalog

SHAPE = ["batch", "heads", "head_dim", "dtype", "causal", "mode", "seq_len"]
ERROR_STATUSES = ("wrong", "oom", "error", "timeout", "unsupported", "skipped")


@dataclass(frozen=True)
class Cell:
    """One table cell. `sort` is None for text and for status cells (they sort last)."""

    text: str
    sort: float | str | None = None
    cls: str = ""
    title: str = ""
    href: str = ""


@dataclass
class Table:
    """A sortable, filterable table: `rows` are (family, cells) pairs."""

    id: str
    columns: list[tuple[str, str]]  # (label, tooltip)
    rows: list[tuple[str, list[Cell]]] = field(default_factory=list)
    caption: str = ""
    # a ranked table: `children[i]` are row i's detail rows (shown on demand, ranked with it);
    # `rank_keys` are the (column index, label, +1 higher is better / -1 lower) it can be ranked by
    children: list[list[tuple[str, list[Cell]]]] = field(default_factory=list)
    rank_keys: list[tuple[int, str, int]] = field(default_factory=list)
    downloads: list[tuple[str, str]] = field(default_factory=list)  # (format, href) of this table's files

    @property
    def groups(self) -> list[tuple[str, list[Cell], list[tuple[str, list[Cell]]]]]:
        """(family, cells, detail rows) of each row (no detail rows for a plain table)."""
        kids = self.children or [[] for _ in self.rows]
        return [(f, cells, k) for (f, cells), k in zip(self.rows, kids, strict=True)]

    @property
    def families(self) -> list[str]:
        return sorted({f for f, _ in self.rows})


def empty_cell() -> Cell:
    return Cell("—", None, "na", "not measured")


def status_cell(status: str, error: str = "") -> Cell:
    return Cell(status, None, f"st st-{status if status in ERROR_STATUSES else 'other'}", error or status)


def fmt(metric: str, unit: str, v: float | None) -> str:
    """Human-readable value of a metric."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if unit == "bytes" or metric.endswith("_bytes"):
        for scale, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
            if abs(v) >= scale:
                return f"{v / scale:.3g} {name}"
        return f"{v:.0f} B"
    if metric.startswith("flops") and metric != "flops_counted_ratio":
        for scale, name in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(v) >= scale:
                return f"{v / scale:.3g} {name}"
        return f"{v:.3g}"
    if unit == "x":
        return f"{v:.3g}×"
    if unit == "%":
        return f"{v:.3g}%"
    if unit == "ms":
        return f"{v:.3g} ms"
    if "err" in metric:
        return f"{v:.2e}"
    return f"{v:.4g}"


def metric_label(metric: str) -> str:
    return catalog().label(metric)


def metric_order(metrics: Iterable[str], suite: str | None = None) -> list[str]:
    """Declaration order (`suite`'s own first); undeclared metrics last, alphabetically; no `status`."""
    return catalog().order(metrics, suite)


def slug(name: str, used: set[str]) -> str:
    """A file/anchor-safe name, unique within `used` (which it extends)."""
    base = re.sub(r"[^a-z0-9_.-]+", "-", name.lower()).strip("-.")[:48] or "x"
    s = base if base == name else f"{base}-{hashlib.sha1(name.encode()).hexdigest()[:6]}"
    while s in used:
        s += "-"
    used.add(s)
    return s


def value_cell(row: pd.Series) -> Cell:
    """A metric row as a cell (status cell when it did not run ok)."""
    if row["status"] != "ok":
        return status_cell(str(row["status"]), str(row["error"] or ""))
    v = row["value"]
    if v is None or pd.isna(v):
        return empty_cell()
    tip = [f"{row['metric']} = {v:.6g} {row['unit'] or ''}".strip()]
    if pd.notna(row.get("p20")) and pd.notna(row.get("p80")):
        tip.append(f"p20–p80 {row['p20']:.4g}–{row['p80']:.4g}")
    if pd.notna(row.get("n")) and row.get("n", 1) and row["n"] > 1:
        tip.append(f"n={int(row['n'])} ({row['stat']})")
    return Cell(fmt(str(row["metric"]), str(row["unit"] or ""), float(v)), float(v), "num", ", ".join(tip))


def shape_label(s: dict[str, Any] | pd.Series) -> str:
    mask = "causal" if s.get("causal") else "full"
    return (
        f"B{_i(s.get('batch'))} H{_i(s.get('heads'))} N{_i(s.get('seq_len'))} D{_i(s.get('head_dim'))} "
        f"{s.get('dtype') or '?'} {mask} {s.get('mode') or ''}"
    ).strip()


def _i(x: Any) -> str:
    return "?" if x is None or (isinstance(x, float) and math.isnan(x)) else str(int(x))


def prepare(df: pd.DataFrame, families: dict[str, str]) -> pd.DataFrame:
    """Normalise a merged results frame: text columns without nulls, device/pair/family labels."""
    df = df.copy()
    for col in (
        "suite",
        "method",
        "backend",
        "params",
        "workload_id",
        "dtype",
        "mode",
        "metric",
        "unit",
        "stat",
        "status",
        "error",
        "device_kind",
        "device_name",
        "family",
        "run_id",
        "hostname",
    ):
        df[col] = df[col].astype(object).where(df[col].notna(), "").astype(str)
    df["device"] = [n or k or "unknown device" for n, k in zip(df["device_name"], df["device_kind"], strict=True)]
    df["pair"] = df["method"] + "/" + df["backend"]
    df["family"] = [f or families.get(m, "") or "unknown" for f, m in zip(df["family"], df["method"], strict=True)]
    df["params"] = df["params"].replace("", "{}")
    return df


def params_label(params: str) -> str:
    try:
        d = json.loads(params)
    except ValueError:
        return params
    return ", ".join(f"{k}={v}" for k, v in sorted(d.items())) if isinstance(d, dict) else params


def shape_key(row: pd.Series) -> tuple[Any, ...]:
    return tuple(None if pd.isna(row[c]) else row[c] for c in SHAPE)


def headline_shape(rows: pd.DataFrame) -> dict[str, Any] | None:
    """The shape most method/backends were measured at (ties: longest sequence, then fwd)."""
    if rows.empty:
        return None
    g = rows.groupby(SHAPE, dropna=False)["pair"].nunique().reset_index()
    g["fwd"] = (g["mode"] == "fwd").astype(int)
    g["n"] = g["seq_len"].fillna(0)
    best = g.sort_values(["pair", "n", "fwd"], ascending=False).iloc[0]
    return {c: (None if pd.isna(best[c]) else best[c]) for c in SHAPE}


def at_shape(rows: pd.DataFrame, shape: dict[str, Any] | None) -> pd.DataFrame:
    if shape is None:
        return rows.iloc[0:0]
    mask = np.ones(len(rows), dtype=bool)
    for c, v in shape.items():
        mask &= rows[c].isna().to_numpy() if v is None else (rows[c] == v).to_numpy()
    return rows[mask]


def pick_cell(rows: pd.DataFrame, pair: str, metric: str, agg: str = "first") -> Cell:
    """Cell for `pair`'s `metric` among `rows` (one case's shape); its status row when it failed."""
    mine = rows[rows["pair"] == pair]
    m = mine[(mine["metric"] == metric) & (mine["status"] == "ok") & mine["value"].notna()]
    if len(m):
        if agg == "mean" and len(m) > 1:
            r = m.iloc[0].copy()
            r["value"], r["p20"], r["p80"], r["n"] = float(m["value"].mean()), np.nan, np.nan, len(m)
            r["stat"] = f"mean of {len(m)}"
            return value_cell(r)
        return value_cell(m.iloc[0])
    bad = mine[mine["status"] != "ok"]
    if len(bad):
        r = bad.iloc[-1]
        return status_cell(str(r["status"]), str(r["error"]))
    return empty_cell()


def fast_p(lat: pd.DataFrame, pair: str, p: float, wrong: set[str], speedup: str | None = None) -> tuple[float, int]:
    """Share of `pair`'s timed cases that ran ok, are correct and beat dense by more than `p`×.

    `lat`: the timing suite's rows; `speedup`: its ratio-to-dense metric (default: the declared one).
    """
    speedup = speedup or catalog().speedup_metric
    mine = lat[lat["pair"] == pair]
    cases = mine["case_id"].unique()
    if not len(cases):
        return float("nan"), 0
    if pair in wrong:
        return 0.0, len(cases)
    sp = mine[(mine["metric"] == speedup) & (mine["status"] == "ok")]
    return float((sp.groupby("case_id")["value"].first() > p).sum()) / len(cases), len(cases)


def win_rates(lat: pd.DataFrame, time: str | None = None) -> dict[str, float]:
    """Pairwise win rate on shared shapes: faster = win, tie = ½, failing where another ran = loss.

    `lat`: the timing suite's rows; `time`: its per-call time metric (default: the declared one).
    """
    time = time or catalog().time_metric
    wins: dict[str, float] = {}
    games: dict[str, int] = {}
    for _, g in lat.groupby(SHAPE, dropna=False):
        times: dict[str, float] = {}
        for pair, pg in g.groupby("pair"):
            ok = pg[(pg["metric"] == time) & (pg["status"] == "ok") & pg["value"].notna()]
            times[str(pair)] = float(ok["value"].iloc[0]) if len(ok) else math.inf
        pairs = list(times)
        for a in pairs:
            for b in pairs:
                if a == b or (math.isinf(times[a]) and math.isinf(times[b])):
                    continue
                games[a] = games.get(a, 0) + 1
                wins[a] = wins.get(a, 0.0) + (1.0 if times[a] < times[b] else 0.5 if times[a] == times[b] else 0.0)
    return {k: wins.get(k, 0.0) / n for k, n in games.items() if n}


def fraction_cell(x: float, n: int, what: str) -> Cell:
    if n == 0 or math.isnan(x):
        return empty_cell()
    return Cell(f"{100 * x:.0f}%", x, "num", f"{what} over {n} case(s)")


def wrong_pairs(df: pd.DataFrame) -> set[str]:
    """Method/backends that computed a wrong result in a suite that checks numerics (role "error")."""
    return set(df.loc[df["suite"].isin(catalog().error_suites) & (df["status"] == "wrong"), "pair"])


def row_identity(df: pd.DataFrame) -> pd.Series:
    """A key per displayed row: the case plus any shape/params columns its rows override."""
    cols = ["case_id", "seq_len", "seq_kv", "params", "dtype", "mode", "causal"]
    parts = [df[c].astype(object).where(df[c].notna(), None).map(str) for c in cols]
    return pd.Series(["|".join(t) for t in zip(*parts, strict=True)], index=df.index)


def pivot_table(
    rows: pd.DataFrame,
    table_id: str,
    method_href: dict[str, str],
    *,
    show_suite: bool = False,
    caption: str = "",
) -> Table:
    """Generic table: one row per case (and overridden shape), one column per metric, plus status."""
    suites = rows["suite"].unique()
    metrics = metric_order(rows["metric"].unique(), str(suites[0]) if len(suites) == 1 else None)
    metrics = [m for m in metrics if not _interval_of(m, metrics)]  # `<m>_lo/_hi` are shown in m's cell
    cols = [("method", "method name"), ("backend", "implementation"), ("family", "method family")]
    if show_suite:
        cols.append(("suite", "suite"))
    cols += [("shape", "workload"), ("params", "method parameters")]
    cols += [(metric_label(m), m) for m in metrics] + [("status", "worst status of the case")]
    table = Table(table_id, cols, caption=caption)
    dense = dense_cases(rows)  # sparse methods that attended (nearly) every pair: greyed, reason in the tip
    rows = rows.assign(_rid=row_identity(rows))
    order = rows.sort_values(["method", "backend", "seq_len", "params"], na_position="last")["_rid"].unique()
    groups = {k: g for k, g in rows.groupby("_rid", sort=False)}
    for rid in order:
        g = groups[rid]
        first = g.iloc[0]
        cells = [
            Cell(str(first["method"]), str(first["method"]), "name", href=method_href.get(first["method"], "")),
            Cell(str(first["backend"]), str(first["backend"])),
            Cell(str(first["family"]), str(first["family"])),
        ]
        if show_suite:
            cells.append(Cell(str(first["suite"]), str(first["suite"])))
        cells += [
            Cell(shape_label(first), _num(first["seq_len"]), title=str(first["workload_id"])),
            Cell(params_label(str(first["params"])), str(first["params"])),
        ]
        for m in metrics:
            mr = g[g["metric"] == m]
            cells.append(_with_interval(value_cell(mr.iloc[0]), g, m) if len(mr) else _failed_or_empty(g))
        bad = g[g["status"] != "ok"]
        cells.append(
            status_cell(str(bad.iloc[-1]["status"]), str(bad.iloc[-1]["error"]))
            if len(bad)
            else Cell("ok", "ok", "st st-ok")
        )
        if (why := dense.get(str(first["case_id"]))) is not None:
            cells = [_greyed(c, why) for c in cells]
        table.rows.append((str(first["family"]), cells))
    return table


def _interval_of(metric: str, metrics: Sequence[str]) -> bool:
    """Is `metric` the `_lo`/`_hi` bound of another metric in the table (e.g. a bootstrap interval)?"""
    return metric.endswith(("_lo", "_hi")) and metric[:-3] in metrics


def _with_interval(c: Cell, g: pd.DataFrame, metric: str) -> Cell:
    """`c` with `[lo, hi]` appended when the case also has `<metric>_lo` and `<metric>_hi` rows."""
    bounds = [g.loc[(g["metric"] == f"{metric}_{b}") & (g["status"] == "ok"), "value"] for b in ("lo", "hi")]
    if c.sort is None or not all(len(b) for b in bounds):
        return c
    lo, hi = (float(b.iloc[0]) for b in bounds)
    unit = str(g.loc[g["metric"] == metric, "unit"].iloc[0] or "")
    text = f"{c.text} [{fmt(metric, unit, lo)}, {fmt(metric, unit, hi)}]"
    return Cell(text, c.sort, c.cls, f"{c.title}, 95% interval {lo:.4g}–{hi:.4g}", c.href)


def _greyed(c: Cell, why: str) -> Cell:
    return Cell(c.text, c.sort, f"{c.cls} {GREY}".strip(), f"{c.title} — {why}" if c.title else why, c.href)


def _failed_or_empty(g: pd.DataFrame) -> Cell:
    bad = g[g["status"] != "ok"]
    return status_cell(str(bad.iloc[-1]["status"]), str(bad.iloc[-1]["error"])) if len(bad) else empty_cell()


def _num(x: Any) -> float | None:
    return None if x is None or pd.isna(x) else float(x)


def pairs_of(df: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(pair, method, backend) in display order: dense baseline first, then by method name."""
    seen = df.drop_duplicates("pair")[["pair", "method", "backend"]].itertuples(index=False)
    return sorted(((p, m, b) for p, m, b in seen), key=lambda t: (t[0] != DENSE_BASELINE, t[1], t[2]))


def series(rows: pd.DataFrame, metric: str, x: str = "seq_len") -> dict[str, list[tuple[float, float]]]:
    """pair (+ params when several) → sorted (x, value) points of ok rows."""
    ok = rows[(rows["metric"] == metric) & (rows["status"] == "ok") & rows["value"].notna() & rows[x].notna()]
    multi = ok.groupby("pair")["params"].nunique()
    out: dict[str, list[tuple[float, float]]] = {}
    for (pair, params), g in ok.groupby(["pair", "params"]):
        label = f"{pair} {params_label(str(params))}" if multi.get(pair, 1) > 1 else str(pair)
        pts = g.groupby(x)["value"].median()
        out[label] = [(float(a), float(b)) for a, b in pts.items()]
    return out


def groups_without(rows: pd.DataFrame, drop: Sequence[str]) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """Split rows by the shape columns other than `drop` (largest groups first)."""
    keys = [c for c in SHAPE if c not in drop]
    out = []
    for k, g in rows.groupby(keys, dropna=False):
        out.append(({c: (None if pd.isna(v) else v) for c, v in zip(keys, k, strict=True)}, g))
    return sorted(out, key=lambda t: -t[1]["pair"].nunique())
