"""The leaderboard model: a merged results frame in, per-device `Table`s of `Cell`s out.

Pure (no HTML, no files): the HTML site and the Markdown summary both render what this builds.
Which columns exist, which shape they are read at and which metrics the aggregates use come from
the suites' declarations (`reports.meaning`), never from a suite's or a metric's name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from attnbench.metrics import DENSE_BASELINE, MetricSpec
from attnbench.reports import data as D
from attnbench.reports.density import GREY, pair_note
from attnbench.reports.meaning import Catalog, catalog


def registered_methods() -> tuple[dict[str, Any], str]:
    """Registered method entries by name, and a warning when plugins could not be loaded."""
    from attnbench.registry import METHODS, load_plugins

    try:
        load_plugins()
    except Exception as exc:  # a broken plugin must not hide other machines' results
        return {e.name: e for e in METHODS}, f"method registry incomplete: {type(exc).__name__}: {exc}"
    return {e.name: e for e in METHODS}, ""


@dataclass
class Results:
    """The prepared frame (device/pair/family labels), the method registry and its warnings."""

    df: pd.DataFrame
    entries: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, df: pd.DataFrame) -> Results:
        entries, warn = registered_methods()
        prepared = D.prepare(df, {n: e.spec.family for n, e in entries.items()})
        return cls(prepared, entries, [warn] if warn else [])

    @property
    def devices(self) -> list[str]:
        return sorted(set(self.df["device"]))

    def on(self, dev: str) -> pd.DataFrame:
        return self.df[self.df["device"] == dev]


@dataclass
class Leaderboard:
    """One device's leaderboard and aggregates tables, with the headline shape of each column's suite."""

    device: str
    board: D.Table
    aggregates: D.Table
    shapes: dict[str, dict[str, Any] | None]
    timing_suite: str | None
    columns: list[tuple[str, str]] = field(default_factory=list)  # (suite, metric) of the headline columns
    proxies: list[tuple[str, str]] = field(default_factory=list)  # (suite, metric) of the proxy columns after them

    @property
    def timing_shape(self) -> dict[str, Any] | None:
        return self.shapes.get(self.timing_suite) if self.timing_suite else None

    def timing_note(self) -> str:
        """Where the timing suite's columns were read, or "" when it did not run."""
        shape = self.timing_shape
        if not shape or not self.timing_suite:
            return ""
        return f"{self.timing_suite.capitalize()} columns at {D.shape_label(shape)}"


def run_summary(res: Results) -> list[dict[str, str]]:
    """Per device: kinds, runs, rows, hosts, torch versions, time span and case statuses."""
    out = []
    for dev in res.devices:
        d = res.on(dev)
        created = pd.to_datetime(d["created_at"], utc=True)
        out.append(
            {
                "device": dev,
                "kind": ", ".join(sorted(set(d["device_kind"]) - {""})),
                "runs": str(d["run_id"].nunique()),
                "rows": str(len(d)),
                "hosts": ", ".join(sorted(set(d["hostname"]) - {""})),
                "torch": ", ".join(sorted(set(d["torch_version"].dropna().astype(str)) - {""})),
                "when": f"{created.min():%Y-%m-%d %H:%M} – {created.max():%Y-%m-%d %H:%M} UTC"
                if len(created.dropna())
                else "",
                "statuses": ", ".join(f"{k} {v}" for k, v in d.groupby("status")["case_id"].nunique().items()),
            }
        )
    return out


def _column_tip(spec: MetricSpec, rows: pd.DataFrame, where: str) -> str:
    """A headline column's tooltip: what the value is (its statistic, or the baseline) and where."""
    if spec.role == "speedup":
        return f"vs {DENSE_BASELINE} at {where}"
    stats = rows.loc[(rows["metric"] == spec.name) & (rows["stat"] != ""), "stat"]
    stat = str(stats.mode().iloc[0]) if len(stats) else ""
    return f"{stat} at {where}" if stat and stat != "value" else f"at {where}"


def _head(method: str, backend: str, fam: str, method_href: Mapping[str, str]) -> list[D.Cell]:
    return [
        D.Cell(method, method, "name", href=method_href.get(method, "")),
        D.Cell(backend, backend),
        D.Cell(fam, fam),
    ]


def leaderboard(res: Results, dev: str, method_href: Mapping[str, str] | None = None) -> Leaderboard:
    """The device's leaderboard (headline columns, proxies, correctness, fast₁, win rate) and aggregates."""
    cat, href = catalog(), method_href or {}
    dd = res.on(dev)
    tid = D.slug(dev, set())
    timing = cat.timing_suite
    lat = dd[dd["suite"] == timing] if timing else dd.iloc[0:0]
    shapes: dict[str, dict[str, Any] | None] = {}
    metric_cols: list[tuple[pd.DataFrame, str]] = []
    columns: list[tuple[str, str]] = []
    cols = [("method", "method"), ("backend", "backend"), ("family", "family")]
    for suite, spec in cat.board_columns:
        rows = dd[dd["suite"] == suite]
        if rows.empty or not (spec.role or (rows["metric"] == spec.name).any()):
            continue
        if any(m == spec.name for _, m in columns):
            continue
        if suite not in shapes:
            shapes[suite] = D.headline_shape(rows)
        where = D.shape_label(shapes[suite]) if shapes[suite] else ""
        metric_cols.append((D.at_shape(rows, shapes[suite]), spec.name))
        columns.append((suite, spec.name))
        cols.append((cat.label(spec.name), _column_tip(spec, rows, where)))
    proxies = cat.proxy_columns(dd)
    cols += [(cat.proxy_label(s, m), f"{s} {m}: mean over the suite's cases") for s, m in proxies]
    checks = [s for s in cat.error_suites if (dd["suite"] == s).any()]
    cols += [(s, f"fused vs reference, all {s} cases") for s in checks]
    if len(lat):
        cols += [
            ("fast₁", f"share of {timing} cases correct and faster than dense"),
            ("win rate", f"pairwise wins on shared {timing} shapes"),
        ]
    board = D.Table(f"lb-{tid}", cols)
    agg = D.Table(
        f"agg-{tid}",
        [
            ("method", "method"),
            ("backend", "backend"),
            ("family", "family"),
            ("cases", f"{timing} cases"),
            ("ok", "cases that ran ok"),
            ("fast₀.₅", "correct and > 0.5× dense"),
            ("fast₁", "correct and faster than dense"),
            ("fast₂", "correct and > 2× dense"),
            ("speedup range", "min–median–max over shapes"),
            ("win rate", "pairwise wins on shared shapes"),
        ],
    )
    wrong = D.wrong_pairs(dd)
    wins = D.win_rates(lat, cat.time_metric) if len(lat) else {}
    for pair, method, backend in D.pairs_of(dd):
        fam = str(dd.loc[dd["pair"] == pair, "family"].iloc[0])
        head = _head(method, backend, fam, href)
        cells = list(head)
        cells += [D.pick_cell(rows, pair, metric) for rows, metric in metric_cols]
        cells += [_proxy_cell(dd[dd["suite"] == s], pair, m) for s, m in proxies]
        cells += [
            correctness_cell(dd[(dd["suite"] == s) & (dd["pair"] == pair)], cat.role_metric(s, "error")) for s in checks
        ]
        if len(lat):
            f1, n = D.fast_p(lat, pair, 1.0, wrong, cat.speedup_metric)
            cells += [D.fraction_cell(f1, n, "fast₁"), D.fraction_cell(wins.get(pair, math.nan), n, "win rate")]
        board.rows.append((fam, cells))
        if len(lat) and (lat["pair"] == pair).any():
            agg.rows.append((fam, [*head, *_aggregate_cells(lat, pair, wrong, wins, cat)]))
    return Leaderboard(dev, board, agg, shapes, timing, columns, proxies)


def _proxy_cell(rows: pd.DataFrame, pair: str, metric: str) -> D.Cell:
    """A proxy's mean over the pair's cases; greyed when the sparse method was dense in every case."""
    cell = D.pick_cell(rows, pair, metric, agg="mean")
    grey, note = pair_note(rows, pair)
    if not note:
        return cell
    title = f"{cell.title} — {note}" if cell.title else note
    return D.Cell(cell.text, cell.sort, f"{cell.cls} {GREY}".strip() if grey else cell.cls, title, cell.href)


def _aggregate_cells(
    lat: pd.DataFrame, pair: str, wrong: set[str], wins: dict[str, float], cat: Catalog
) -> list[D.Cell]:
    mine = lat[lat["pair"] == pair]
    n_cases = mine["case_id"].nunique()
    n_ok = mine[(mine["metric"] == cat.time_metric) & (mine["status"] == "ok")]["case_id"].nunique()
    fr = [
        D.fraction_cell(*D.fast_p(lat, pair, p, wrong, cat.speedup_metric), what)
        for p, what in ((0.5, "fast₀.₅"), (1.0, "fast₁"), (2.0, "fast₂"))
    ]
    return [
        D.Cell(str(n_cases), float(n_cases), "num"),
        D.Cell(str(n_ok), float(n_ok), "num"),
        *fr,
        speedup_range(mine, cat.speedup_metric),
        D.fraction_cell(wins.get(pair, math.nan), n_cases, "win rate"),
    ]


def speedup_range(rows: pd.DataFrame, metric: str | None) -> D.Cell:
    """min–median–max of `metric` over `rows` that ran ok."""
    sp = rows[(rows["metric"] == metric) & (rows["status"] == "ok")]["value"].dropna()
    if not len(sp):
        return D.empty_cell()
    med = float(np.median(sp))
    return D.Cell(f"{sp.min():.3g}–{med:.3g}–{sp.max():.3g}×", med, "num")


def correctness_cell(rows: pd.DataFrame, error_metric: str | None) -> D.Cell:
    """Worst status over a pair's cases of a numerics suite; ok cells carry the worst declared error."""
    if rows.empty:
        return D.empty_cell()
    cases = rows.groupby("case_id")["status"].agg(lambda s: next((x for x in s if x != "ok"), "ok"))
    if (cases == "wrong").any():
        err = rows.loc[rows["status"] == "wrong", "error"].iloc[0]
        return D.status_cell("wrong", f"{(cases == 'wrong').sum()} of {len(cases)} cases wrong: {err}")
    n_ok = int((cases == "ok").sum())
    if n_ok == 0:
        bad = rows[rows["status"] != "ok"].iloc[-1]
        return D.status_cell(str(bad["status"]), str(bad["error"]))
    errs = rows[(rows["metric"] == error_metric) & (rows["status"] == "ok")]["value"].dropna()
    worst = float(errs.max()) if len(errs) else math.nan
    what = catalog().label(error_metric) if error_metric else "error"
    tip = f"{n_ok} of {len(cases)} cases ok" + (f"; worst {what} {worst:.2e}" if errs.size else "")
    return D.Cell(f"ok {n_ok}/{len(cases)}", worst if errs.size else None, "st st-ok", tip)
