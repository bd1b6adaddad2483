"""The report's data model: merged results → per-device tables of display cells and aggregates.

Everything here is plain data (no HTML): `Cell`s carry the text, a numeric sort key, a CSS class
and a tooltip; the templates escape every string. Unknown metrics and suites get generic tables.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from attnbench import gate

SHAPE = ["batch", "heads", "head_dim", "dtype", "causal", "mode", "seq_len"]
KERNEL_SUITES = ("latency", "memory", "flops", "correctness", "scaling")
DENSE = "mha/sdpa"
# Known metrics in display order, with short labels; unknown metrics follow, alphabetically.
METRIC_LABELS = {
    "latency_ms": "latency",
    "setup_ms": "setup",
    "tflops": "TFLOP/s",
    "pct_peak": "% of peak",
    "speedup_vs_dense": "speedup vs dense",
    "speedup_bound": "speedup bound",
    "realisation": "realisation",
    "peak_mem_bytes": "peak memory",
    "attn_matrix_bytes": "attn matrix",
    "kv_cache_bytes": "KV cache",
    "flops_useful": "FLOPs useful",
    "flops_executed": "FLOPs executed",
    "flops_counted": "FLOPs counted",
    "flops_counted_ratio": "counted / analytic",
    "max_abs_err": "max abs err",
    "max_rel_err": "max rel err",
    "grad_max_abs_err": "grad max abs err",
    "cost_exponent": "cost exponent",
    "accuracy": "accuracy",
    "top1": "top-1",
    "top5": "top-5",
    "mse": "MSE",
    "mqar_acc": "MQAR accuracy",
    "niah_acc_in_range": "NIAH accuracy",
    "niah_acc_extrap": "NIAH extrapolation",
    "icl_mse": "ICL MSE",
    "icl_garg_mse": "ICL error / d (Garg)",
    "niah_k4v1q1_acc_in_range": "NIAH multi-key",
    "niah_k1v2q1_acc_in_range": "NIAH multi-value",
    "niah_k4v1q2_acc_in_range": "NIAH multi-query",
    "flops_per_image": "FLOPs / image",
    "pope_adversarial_f1": "POPE adversarial F1",
    "chair_i": "CHAIR-i",
}
# The accuracy-proxy metrics the leaderboard shows per suite (others are on the suite pages); a
# suite not listed shows its shortest gated non-timing metric.
PROXY_HEADLINE = {
    "mqar": ("mqar_acc",),
    "niah": ("niah_acc_in_range", "niah_k4v1q1_acc_in_range", "niah_k1v2q1_acc_in_range", "niah_k4v1q2_acc_in_range"),
    "icl_regression": ("icl_mse", "icl_garg_mse"),
    "image_cls": ("top1",),
    "hallucination": ("pope_adversarial_f1", "chair_i"),
}
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
    return METRIC_LABELS.get(metric, metric.replace("_", " "))


def metric_order(metrics: Iterable[str]) -> list[str]:
    known = list(METRIC_LABELS)
    ms = set(metrics) - {"status"}
    return [m for m in known if m in ms] + sorted(ms - set(known))


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


def fast_p(lat: pd.DataFrame, pair: str, p: float, wrong: set[str]) -> tuple[float, int]:
    """Share of `pair`'s latency cases that ran ok, are correct and beat dense by more than `p`×."""
    mine = lat[lat["pair"] == pair]
    cases = mine["case_id"].unique()
    if not len(cases):
        return float("nan"), 0
    if pair in wrong:
        return 0.0, len(cases)
    sp = mine[(mine["metric"] == "speedup_vs_dense") & (mine["status"] == "ok")]
    return float((sp.groupby("case_id")["value"].first() > p).sum()) / len(cases), len(cases)


def win_rates(lat: pd.DataFrame) -> dict[str, float]:
    """Pairwise win rate on shared shapes: faster = win, tie = ½, failing where another ran = loss."""
    wins: dict[str, float] = {}
    games: dict[str, int] = {}
    for _, g in lat.groupby(SHAPE, dropna=False):
        times: dict[str, float] = {}
        for pair, pg in g.groupby("pair"):
            ok = pg[(pg["metric"] == "latency_ms") & (pg["status"] == "ok") & pg["value"].notna()]
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
    return set(df.loc[(df["suite"] == "correctness") & (df["status"] == "wrong"), "pair"])


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
    metrics = metric_order(rows["metric"].unique())
    cols = [("method", "method name"), ("backend", "implementation"), ("family", "method family")]
    if show_suite:
        cols.append(("suite", "suite"))
    cols += [("shape", "workload"), ("params", "method parameters")]
    cols += [(metric_label(m), m) for m in metrics] + [("status", "worst status of the case")]
    table = Table(table_id, cols, caption=caption)
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
            cells.append(value_cell(mr.iloc[0]) if len(mr) else _failed_or_empty(g))
        bad = g[g["status"] != "ok"]
        cells.append(
            status_cell(str(bad.iloc[-1]["status"]), str(bad.iloc[-1]["error"]))
            if len(bad)
            else Cell("ok", "ok", "st st-ok")
        )
        table.rows.append((str(first["family"]), cells))
    return table


def _failed_or_empty(g: pd.DataFrame) -> Cell:
    bad = g[g["status"] != "ok"]
    return status_cell(str(bad.iloc[-1]["status"]), str(bad.iloc[-1]["error"])) if len(bad) else empty_cell()


def _num(x: Any) -> float | None:
    return None if x is None or pd.isna(x) else float(x)


def proxy_columns(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(suite, metric) of the accuracy-proxy suites shown on the leaderboard (means per method)."""
    out = []
    prox = df[~df["suite"].isin((*KERNEL_SUITES, "pytest_benchmark")) & (df["status"] == "ok")]
    for suite, g in prox.groupby("suite"):
        units = g.groupby("metric")["unit"].first()
        chosen = [m for m in PROXY_HEADLINE.get(str(suite), ()) if m in units.index]
        if not chosen:
            scored = [
                m
                for m, u in units.items()
                if gate.direction(m, u) and not gate.is_timed(m, u) and not m.endswith("_bytes") and "_curve_" not in m
            ]
            chosen = sorted(scored, key=lambda m: (gate.direction(m, units[m]) != gate.HIGHER, len(m), m))[:1]
        out += [(str(suite), m) for m in chosen]
    return out


def proxy_label(suite: str, metric: str) -> str:
    return METRIC_LABELS[metric] if metric in METRIC_LABELS else f"{suite} {metric_label(metric)}"


def higher_is_better(metric: str, unit: str = "") -> bool:
    return gate.direction(metric, unit) == gate.HIGHER


def pairs_of(df: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(pair, method, backend) in display order: dense baseline first, then by method name."""
    seen = df.drop_duplicates("pair")[["pair", "method", "backend"]].itertuples(index=False)
    return sorted(((p, m, b) for p, m, b in seen), key=lambda t: (t[0] != DENSE, t[1], t[2]))


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
