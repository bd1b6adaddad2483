"""Build the static leaderboard site: overview, per-suite, per-method and cross-device pages.

Pages are jinja2 templates rendered with autoescape; plots are SVG files next to them; sorting
and filtering are a few lines of vanilla JS in static/. Nothing is fetched from the network, so
the site works from `file://`. The tables come from the pure models (`reports.leaderboard`,
`reports.methods`, `reports.devices`); this module lays them out into pages with their plots.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from attnbench import results
from attnbench.benchjson import load_inputs
from attnbench.metrics import DENSE_BASELINE
from attnbench.reports import data as D
from attnbench.reports import exports
from attnbench.reports import methods as M
from attnbench.reports.density import density_plots
from attnbench.reports.devices import cross_device
from attnbench.reports.figures import SuiteFigures
from attnbench.reports.history import has_history, method_history
from attnbench.reports.leaderboard import Results, leaderboard, run_summary
from attnbench.reports.meaning import catalog
from attnbench.reports.plots import Plot, PlotWriter
from attnbench.reports.ranking import ranked

UNIT_WORDS = {"B": "bytes"}  # axis labels spell out terse units


@dataclass
class Section:
    """A titled block of a page: text lines, tables and plots."""

    title: str
    anchor: str = ""
    lines: list[str] = field(default_factory=list)
    tables: list[D.Table] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)


def _peak(device_name: str, dtype: str) -> float | None:
    try:
        from attnbench.device import peak_tflops
    except ImportError:
        return None
    return peak_tflops(device_name, dtype)


def _axis(metric: str) -> str:
    """`label (unit)` of a metric, for an axis or a plot title."""
    cat = catalog()
    unit = cat.unit(metric)
    return f"{cat.label(metric)} ({UNIT_WORDS.get(unit, unit)})" if unit else cat.label(metric)


class SiteBuilder:
    """Holds the merged frame and writes every page."""

    def __init__(self, df: pd.DataFrame, out: Path, raw: pd.DataFrame | None = None) -> None:
        self.res = Results.of(df)
        self.df, self.warnings = self.res.df, self.res.warnings
        self.out = out
        self.raw = df if raw is None else raw  # every run read (history, results.parquet)
        self.raw_href = ""
        self.plots = PlotWriter(out)
        self.fig = SuiteFigures(self.plots)
        used: set[str] = set()
        self.method_href = {
            m: f"method-{D.slug(m, used)}.html" for m in sorted(set(self.df["method"]) | set(self.res.entries))
        }
        self.suite_href = {s: f"suite-{D.slug(s, used)}.html" for s in sorted(set(self.df["suite"]))}
        self.devices = self.res.devices
        self.everything = (
            D.prepare(self.raw, {n: e.spec.family for n, e in self.res.entries.items()})
            if has_history(self.raw)
            else None
        )
        self.history_href = {
            m: f"history-{h.removeprefix('method-')}"
            for m, h in self.method_href.items()
            if self.everything is not None and has_history(self.everything[self.everything["method"] == m])
        }
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(resources.files("attnbench.reports") / "templates")),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        env.filters["sortkey"] = lambda v: "" if v is None else (repr(float(v)) if isinstance(v, float) else v)
        self.env = env

    # -- pages ----------------------------------------------------------------------------
    def render(self, name: str, template: str, **ctx: Any) -> Path:
        nav = (
            [("Overview", "index.html")]
            + [(s, h) for s, h in self.suite_href.items()]
            + [("Methods", "methods.html"), ("Devices", "devices.html")]
        )
        tables = [t for sec in ctx.get("sections", []) for t in sec.tables]
        tables += [v for v in ctx.values() if isinstance(v, D.Table)]
        for t in tables:  # the downloads of every table shown, from the same model
            t.downloads = exports.write_table(t, self.out, name.removesuffix(".html"))
        html = self.env.get_template(template).render(
            nav=nav, page=name, warnings=self.warnings, raw_href=self.raw_href, **ctx
        )
        path = self.out / name
        path.write_text(html, encoding="utf-8")
        return path

    def build(self) -> Path:
        static = self.out / "static"
        static.mkdir(parents=True, exist_ok=True)
        for item in (resources.files("attnbench.reports") / "static").iterdir():
            if item.is_file():
                (static / item.name).write_bytes(item.read_bytes())
        if (self.out / "tables").is_dir():
            shutil.rmtree(self.out / "tables")
        for stale in self.out.glob("history-*.html"):  # a rebuild from results of one commit has none
            stale.unlink()
        self.raw_href = exports.write_results(self.raw, self.out)
        for suite, href in self.suite_href.items():
            self.render(href, "suite.html", title=f"Suite: {suite}", suite=suite, sections=self.suite_sections(suite))
        for method, href in self.method_href.items():
            self.render(
                href,
                "method.html",
                title=f"Method: {method}",
                method=method,
                info=M.method_info(self.res, method),
                history=self.history_href.get(method, ""),
                sections=self.method_sections(method),
            )
        for method, href in self.history_href.items():
            self.render(
                href,
                "generic.html",
                title=f"History: {method}",
                sections=self.history_sections(method),
            )
        methods = M.methods_table(self.res, self.method_href)
        self.render("methods.html", "methods.html", title="Methods", methods=methods)
        self.render("devices.html", "generic.html", title="Across devices", sections=self.device_sections())
        return self.render(
            "index.html",
            "index.html",
            title="attnbench leaderboard",
            runs=run_summary(self.res),
            sections=self.overview_sections(),
            suites=list(self.suite_href.items()),
        )

    # -- overview -------------------------------------------------------------------------
    def overview_sections(self) -> list[Section]:
        cat = catalog()
        out = []
        for dev in self.devices:
            lb = leaderboard(self.res, dev, self.method_href)
            dd = self.res.on(dev)
            sec = Section(dev, f"dev-{D.slug(dev, set())}", tables=[ranked(lb)])
            sec.lines.append(
                "One row per method: its fastest fused backend (▸ shows the others), ranked by the metric "
                "chosen above the table; accuracy proxies are means over their suite's cases."
            )
            if lb.timing_note():
                sec.lines.append(
                    f"{lb.timing_note()} (the shape most method/backends ran); other shapes on the suite pages."
                )
            if lb.aggregates.rows:
                lb.aggregates.caption = (
                    f"Aggregates over every {lb.timing_suite} shape (no geometric mean: fast_p and win rate)"
                )
                sec.tables.append(lb.aggregates)
            for suite, metric in lb.columns:  # the costs on the board, vs sequence length
                if metric not in cat.costs(suite):
                    continue
                sel, g = D.groups_without(dd[dd["suite"] == suite], ["seq_len"])[0]
                what = _axis(metric)
                p = self.plots.lines(
                    D.series(g, metric),
                    title=f"{what} vs sequence length — {dev}",
                    xlabel="sequence length",
                    ylabel=what,
                )
                if p:
                    sec.plots.append(p)
            if lb.timing_suite and cat.time_metric:
                sec.plots += self.fig.pareto_plots(dd, dev, lb.timing_suite, cat.time_metric, lb.timing_shape)
            sec.plots += density_plots(self.plots, dd, dev)  # accuracy vs effective density per proxy
            out.append(sec)
        return out

    def suite_sections(self, suite: str, method: str | None = None) -> list[Section]:
        """One section per device; for a method page, only its rows and its heatmaps."""
        out = []
        for dev in self.devices:
            rows = self.df[(self.df["device"] == dev) & (self.df["suite"] == suite)]
            if method is not None:
                rows = rows[rows["method"] == method]
            if rows.empty:
                continue
            tid = f"t-{D.slug(suite + '-' + dev, set())}"
            sec = Section(f"{suite} — {dev}", tid, tables=[D.pivot_table(rows, tid, self.method_href)])
            if method is None:
                sec.plots = self.fig.suite_plots(rows, suite, dev)
            else:  # the method's own heatmaps (drawn once for the suite page)
                sec.plots = self.fig.depth_heatmaps(rows, suite, dev)
                for metric in rows["metric"].unique():
                    sec.plots += self.fig.param_curves(rows, suite, metric, dev, heatmaps_only=True)
            out.append(sec)
        return out

    # -- methods --------------------------------------------------------------------------
    def method_sections(self, method: str) -> list[Section]:
        cat = catalog()
        mine = self.df[self.df["method"] == method]
        out = []
        for dev in self.devices:
            md = mine[mine["device"] == dev]
            if md.empty:
                continue
            sec = Section(
                f"Measured on {dev}",
                f"m-{D.slug(dev, set())}",
                tables=[M.measured_table(self.res, method, dev), M.capability_table(md, dev)],
            )
            time = cat.time_metric
            lat = self.df[(self.df["device"] == dev) & (self.df["suite"] == cat.timing_suite)]
            lat = lat[(lat["method"] == method) | (lat["pair"] == DENSE_BASELINE)]
            if len(lat) and time:
                sel, g = D.groups_without(lat, ["seq_len"])[0]
                p = self.plots.lines(
                    D.series(g, time),
                    title=f"{method}: {cat.label(time)} vs sequence length — {dev}",
                    xlabel="sequence length",
                    ylabel=_axis(time),
                )
                if p:
                    sec.plots.append(p)
            out.append(sec)
        for suite in sorted(set(mine["suite"])):
            out += self.suite_sections(suite, method)
        return out

    def history_sections(self, method: str) -> list[Section]:
        """One section per headline metric: its value per commit (table) and as lines."""
        assert self.everything is not None
        out = []
        for h in method_history(self.everything, method):
            sec = Section(f"{h.label} ({h.suite})", f"h-{D.slug(h.suite + '-' + h.metric, set())}", tables=[h.table])
            sec.lines.append("One line per backend (and device): the value at each commit, oldest first.")
            p = self.plots.lines(
                h.series,
                title=f"{method}: {h.label} per commit",
                xlabel="commit (oldest → newest)",
                ylabel=_axis(h.metric),
                logx=False,
                logy=False,
                xticks=h.ticks,
            )
            if p:
                sec.plots.append(p)
            out.append(sec)
        return out

    # -- devices --------------------------------------------------------------------------
    def device_sections(self) -> list[Section]:
        intro = Section("Devices", "devices")
        for dev in self.devices:
            dd = self.res.on(dev)
            kinds = ", ".join(sorted(set(dd["device_kind"]) - {""})) or "?"
            peaks = {dt: _peak(dev, dt) for dt in sorted(set(dd["dtype"]) - {""})}
            known = ", ".join(f"{dt} {p:g} TFLOP/s" for dt, p in peaks.items() if p)
            intro.lines.append(f"{dev} ({kinds}): dense peak {known or 'unknown (no % of peak)'}")
        xdev = cross_device(self.df, self.devices, self.method_href, _peak)
        if xdev is None:
            intro.lines.append("Results from one device only: nothing to set side by side yet.")
            return [intro]
        t, bars = xdev
        sec = Section("Same shape across devices", "xdev", tables=[t])
        if not t.rows:
            sec.lines.append("No (method, backend, shape) was measured on two devices.")
        else:
            sec.lines.append(
                "Normalised to each device: % of its dense peak where the peak is known, and "
                "speedup against the dense baseline measured on the same device (one metric per plot)."
            )
            for what, groups in bars.items():
                longest = sorted(groups, key=lambda s: float(s.rsplit("N", 1)[1]))[-24:]
                p = self.plots.bars(
                    {k: groups[k] for k in longest},
                    title=f"{what} by device",
                    ylabel=what,
                )
                if p:
                    sec.plots.append(p)
        return [intro, sec]


def build_site(inputs: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str]) -> Path:
    """Render results under `inputs` (folders, Parquet or pytest-benchmark JSON) into `out_dir`.

    Returns:
        The path of `index.html`.
    Raises:
        attnbench.results.SchemaError: a file of an unknown schema major version.
        FileNotFoundError: an input does not exist.
    """
    raw = load_inputs(inputs, latest_only=False)
    df = results.merge([raw], latest_only=True)
    out = Path(out_dir)
    if (out / "plots").is_dir():
        shutil.rmtree(out / "plots")
    out.mkdir(parents=True, exist_ok=True)
    return SiteBuilder(df, out, raw).build()
