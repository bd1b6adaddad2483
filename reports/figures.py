"""Plots of the suite pages: scores vs sequence length, error curves, depth heatmaps, Pareto fronts."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from attnbench.reports import data as D
from attnbench.reports.meaning import catalog
from attnbench.reports.plots import Plot, PlotWriter

MAX_GROUP_PLOTS = 4  # shape groups plotted per suite and device


class SuiteFigures:
    """Draws (through a shared, memoising PlotWriter) the figures of suites and the overview."""

    def __init__(self, plots: PlotWriter) -> None:
        self.plots = plots

    def pareto_plots(
        self, dd: pd.DataFrame, dev: str, suite: str, time: str, shape: dict[str, Any] | None
    ) -> list[Plot]:
        """Each higher-is-better proxy score against the fastest backend's `time` (of `suite`, at `shape`)."""
        lat = D.at_shape(dd[dd["suite"] == suite], shape)
        lat = lat[(lat["metric"] == time) & (lat["status"] == "ok")]
        cat = catalog()
        unit = cat.unit(time)
        fastest = f"fastest backend {cat.label(time)}" + (f" ({unit})" if unit else "")
        if lat.empty:
            return []
        best = lat.groupby("method")["value"].min()
        out = []
        for proxy, metric in cat.proxy_columns(dd):
            if not cat.higher_is_better(metric):
                continue
            score = dd[(dd["suite"] == proxy) & (dd["metric"] == metric) & (dd["status"] == "ok")]
            score = score.groupby("method")["value"].mean()
            pts = [(m, float(best[m]), float(score[m])) for m in score.index if m in best.index]
            what = cat.proxy_label(proxy, metric)
            p = self.plots.pareto(
                pts,
                title=f"{what} vs latency — {dev}",
                xlabel=f"{fastest} at {D.shape_label(shape or {})}",
                ylabel=f"{what} (mean over cases)",
            )
            if p:
                out.append(p)
        return out

    # -- suites ---------------------------------------------------------------------------
    def suite_plots(self, rows: pd.DataFrame, suite: str, dev: str) -> list[Plot]:
        """Costs (log axes) and headline scores vs sequence length, error curves, depth heatmaps."""
        plots: list[Plot] = []
        cat = catalog()
        costs = cat.costs(suite)
        headline = [m for s, m in cat.proxy_columns(rows) if s == suite]
        for metric in cat.order(rows["metric"].unique(), suite):
            if metric not in (*costs, *headline):
                continue
            log = metric in costs
            mrows = rows[rows["metric"] == metric]
            for key in varying_params(mrows):  # e.g. a param sweep: the line is the median over it
                mrows = mrows.assign(params=mrows["params"].map(lambda s, key=key: _without(s, key)))
            for sel, g in D.groups_without(mrows, ["seq_len"])[:MAX_GROUP_PLOTS]:
                if g["seq_len"].nunique() < 2:
                    continue
                what = D.metric_label(metric)
                p = self.plots.lines(
                    D.series(g, metric),
                    title=f"{suite}: {what} vs sequence length",
                    xlabel="sequence length",
                    ylabel=what,
                    logy=log,
                    caption=f"{suite}: {what} vs sequence length — {dev}, "
                    f"{D.shape_label({**sel, 'seq_len': 0}).replace(' N0', '')}",
                )
                if p:
                    plots.append(p)
            plots += self.param_curves(rows, suite, metric, dev)
        plots += self.curves(rows, suite, dev)
        plots += self.depth_heatmaps(rows, suite, dev)
        plots += self.head_heatmaps(rows, suite, dev)
        return plots

    def head_heatmaps(self, rows: pd.DataFrame, suite: str, dev: str) -> list[Plot]:
        """Per-head scores (params carry `layer` and `head`, e.g. `attnbench analyze`) as layer × head maps."""
        ok = rows[(rows["status"] == "ok") & rows["value"].notna()]
        where = ok["params"].map(lambda s: params_dict(s))
        ok = ok.assign(layer=where.map(lambda d: d.get("layer")), head=where.map(lambda d: d.get("head")))
        ok = ok[ok["layer"].notna() & ok["head"].notna()]
        plots = []
        for (metric, pair), g in ok.groupby(["metric", "pair"]):
            grid = g.pivot_table(index="layer", columns="head", values="value", aggfunc="median")
            values = grid.to_numpy(dtype=float)
            lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
            p = self.plots.heatmap(
                values.tolist(),
                xlabels=[str(int(c)) for c in grid.columns],
                ylabels=[str(int(i)) for i in grid.index],
                title=f"{D.metric_label(metric)}: {pair}",
                xlabel="head",
                ylabel="layer",
                vmin=lo,
                vmax=hi if hi > lo else lo + 1.0,
                caption=f"{suite}: {D.metric_label(metric)} per layer and head: {pair} — {dev}",
            )
            if p:
                plots.append(p)
        return plots

    def curves(self, rows: pd.DataFrame, suite: str, dev: str) -> list[Plot]:
        """`<name>_curve_model` per method/backend vs its x (seq_len), with `<name>_curve_<baseline>`s."""
        ok = rows[rows["metric"].str.contains("_curve_") & (rows["status"] == "ok") & rows["value"].notna()]
        plots = []
        for prefix in sorted({m.split("_curve_")[0] for m in ok["metric"]}):
            mine = ok[ok["metric"].str.startswith(prefix + "_curve_")]
            model = mine[mine["metric"] == f"{prefix}_curve_model"]
            lines = D.series(model, f"{prefix}_curve_model")
            for metric in sorted(set(mine["metric"]) - {f"{prefix}_curve_model"}):
                base = mine[mine["metric"] == metric].groupby("seq_len")["value"].median()
                lines[f"baseline: {metric.split('_curve_')[1]}"] = [(float(a), float(b)) for a, b in base.items()]
            unit = str(mine["unit"].iloc[0] or "value")
            p = self.plots.lines(
                lines,
                title=f"{suite}: {prefix} curve",
                xlabel="in-context examples (k)",
                ylabel=unit,
                logx=False,
                logy=True,
                caption=f"{suite}: error vs number of in-context examples — {dev}",
            )
            if p:
                plots.append(p)
        return plots

    def depth_heatmaps(self, rows: pd.DataFrame, suite: str, dev: str) -> list[Plot]:
        """Metrics named `<name>_depth<δ>` (with seq_len = context length) as depth × length heatmaps."""
        ok = rows[(rows["status"] == "ok") & rows["value"].notna()]
        found = ok["metric"].str.extract(r"^(?P<name>.+)_depth(?P<depth>[0-9.]+)$")
        ok = ok.assign(_name=found["name"], depth=pd.to_numeric(found["depth"], errors="coerce"))
        ok = ok[ok["depth"].notna()]
        plots = []
        for (name, pair), g in ok.groupby(["_name", "pair"]):
            grid = g.pivot_table(index="depth", columns="seq_len", values="value", aggfunc="median")
            plots += self._heatmap(grid, f"{suite} {name}", str(pair), dev)
        return plots

    def _heatmap(self, grid: pd.DataFrame, what: str, pair: str, dev: str) -> list[Plot]:
        p = self.plots.heatmap(
            grid.to_numpy(dtype=float).tolist(),
            xlabels=[str(int(c)) for c in grid.columns],
            ylabels=[f"{d:g}" for d in grid.index],
            title=f"{what}: {pair}",
            xlabel="context length",
            ylabel="needle depth",
            caption=f"{what} by context length and needle depth: {pair} — {dev}",
        )
        return [p] if p else []

    def param_curves(
        self, rows: pd.DataFrame, suite: str, metric: str, dev: str, *, heatmaps_only: bool = False
    ) -> list[Plot]:
        """Scores over numeric params (a `depth` param with several lengths: a heatmap per backend)."""
        ok = rows[(rows["metric"] == metric) & (rows["status"] == "ok") & rows["value"].notna()]
        if ok.empty:
            return []
        varying = varying_params(ok)
        plots: list[Plot] = []
        if "depth" in varying and ok["seq_len"].nunique() > 1:
            depth = ok["params"].map(lambda s: params_dict(s).get("depth"))
            for pair, g in ok.assign(depth=depth).groupby("pair"):
                grid = g.pivot_table(index="depth", columns="seq_len", values="value", aggfunc="median")
                plots += self._heatmap(grid, f"{suite} {D.metric_label(metric)}", str(pair), dev)
            varying.remove("depth")
        if heatmaps_only:
            return plots
        for key in varying[:2]:
            x = pd.to_numeric(ok["params"].map(lambda s, key=key: params_dict(s).get(key)), errors="coerce")
            g = ok.assign(_x=x, params=ok["params"].map(lambda s, key=key: _without(s, key)))
            what = D.metric_label(metric)
            p = self.plots.lines(
                D.series(g, metric, x="_x"),
                title=f"{suite}: {what} vs {key}",
                xlabel=key,
                ylabel=what,
                logx=False,
                logy=metric in ("mse", "loss"),
                caption=f"{suite}: {what} vs {key} — {dev}",
            )
            if p:
                plots.append(p)
        return plots

    # -- methods --------------------------------------------------------------------------


def params_dict(s: str) -> dict[str, Any]:

    try:
        d = json.loads(s)
    except ValueError:
        return {}
    return d if isinstance(d, dict) else {}


def varying_params(rows: pd.DataFrame) -> list[str]:
    """Numeric param keys that take several values among `rows`."""
    parsed = rows["params"].map(params_dict)
    keys = sorted({k for p in parsed for k, v in p.items() if isinstance(v, int | float) and not isinstance(v, bool)})
    # values compared as JSON: one case may hold a list (kernel_size=[8,16]) where another holds a number
    return [k for k in keys if parsed.map(lambda p, k=k: json.dumps(p.get(k), sort_keys=True)).nunique() > 1]


def _without(s: str, key: str) -> str:
    d = params_dict(s)
    d.pop(key, None)
    return _json(d)


def _json(d: dict[str, Any]) -> str:

    return json.dumps(d, sort_keys=True, default=str)
