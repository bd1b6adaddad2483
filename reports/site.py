"""Build the static leaderboard site: overview, per-suite, per-method and cross-device pages.

Pages are jinja2 templates rendered with autoescape; plots are SVG files next to them; sorting
and filtering are a few lines of vanilla JS in static/. Nothing is fetched from the network, so
the site works from `file://`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from attnbench.benchjson import load_inputs
from attnbench.reports import data as D
from attnbench.reports.figures import SuiteFigures
from attnbench.reports.plots import Plot, PlotWriter


@dataclass
class Section:
    """A titled block of a page: text lines, tables and plots."""

    title: str
    anchor: str = ""
    lines: list[str] = field(default_factory=list)
    tables: list[D.Table] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)


def _slug(name: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9_.-]+", "-", name.lower()).strip("-.")[:48] or "x"
    slug = base if base == name else f"{base}-{hashlib.sha1(name.encode()).hexdigest()[:6]}"
    while slug in used:
        slug += "-"
    used.add(slug)
    return slug


def _specs() -> tuple[dict[str, Any], str]:
    """Registered method specs by name, and a warning when plugins could not be loaded."""
    from attnbench.registry import METHODS, load_plugins

    try:
        load_plugins()
    except Exception as exc:  # a broken plugin must not hide other machines' results
        return {e.name: e for e in METHODS}, f"method registry incomplete: {type(exc).__name__}: {exc}"
    return {e.name: e for e in METHODS}, ""


def _peak(device_name: str, dtype: str) -> float | None:
    try:
        from attnbench.device import peak_tflops
    except ImportError:
        return None
    return peak_tflops(device_name, dtype)


def _safe_url(url: str) -> str:
    return url if re.match(r"^https?://", url or "") else ""


class SiteBuilder:
    """Holds the merged frame and writes every page."""

    def __init__(self, df: pd.DataFrame, out: Path) -> None:
        self.entries, warn = _specs()
        self.warnings = [warn] if warn else []
        self.df = D.prepare(df, {n: e.spec.family for n, e in self.entries.items()})
        self.out = out
        self.plots = PlotWriter(out)
        self.fig = SuiteFigures(self.plots)
        used: set[str] = set()
        self.method_href = {
            m: f"method-{_slug(m, used)}.html" for m in sorted(set(self.df["method"]) | set(self.entries))
        }
        self.suite_href = {s: f"suite-{_slug(s, used)}.html" for s in sorted(set(self.df["suite"]))}
        self.devices = sorted(set(self.df["device"]))
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
        html = self.env.get_template(template).render(nav=nav, page=name, warnings=self.warnings, **ctx)
        path = self.out / name
        path.write_text(html, encoding="utf-8")
        return path

    def build(self) -> Path:
        static = self.out / "static"
        static.mkdir(parents=True, exist_ok=True)
        for item in (resources.files("attnbench.reports") / "static").iterdir():
            if item.is_file():
                (static / item.name).write_bytes(item.read_bytes())
        for suite, href in self.suite_href.items():
            self.render(href, "suite.html", title=f"Suite: {suite}", suite=suite, sections=self.suite_sections(suite))
        for method, href in self.method_href.items():
            self.render(
                href,
                "method.html",
                title=f"Method: {method}",
                method=method,
                info=self.method_info(method),
                sections=self.method_sections(method),
            )
        self.render("methods.html", "methods.html", title="Methods", methods=self.methods_table())
        self.render("devices.html", "generic.html", title="Across devices", sections=self.device_sections())
        return self.render(
            "index.html",
            "index.html",
            title="attnbench leaderboard",
            runs=self.run_summary(),
            sections=self.overview_sections(),
            suites=list(self.suite_href.items()),
        )

    # -- overview -------------------------------------------------------------------------
    def run_summary(self) -> list[dict[str, str]]:
        out = []
        for dev in self.devices:
            d = self.df[self.df["device"] == dev]
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

    def leaderboard(self, dev: str) -> tuple[D.Table, D.Table, dict[str, Any]]:
        """The device's leaderboard and aggregates tables, plus the headline shapes used."""
        dd = self.df[self.df["device"] == dev]
        lat, mem, fl = (dd[dd["suite"] == s] for s in ("latency", "memory", "flops"))
        hl, hm, hf = D.headline_shape(lat), D.headline_shape(mem), D.headline_shape(fl)
        at_l, at_m, at_f = D.at_shape(lat, hl), D.at_shape(mem, hm), D.at_shape(fl, hf)
        proxies = D.proxy_columns(dd)
        has_peak = bool((lat["metric"] == "pct_peak").any())
        wrong = D.wrong_pairs(dd)
        wins = D.win_rates(lat)
        where = {
            "latency": D.shape_label(hl) if hl else "",
            "memory": D.shape_label(hm) if hm else "",
            "flops": D.shape_label(hf) if hf else "",
        }
        cols = [("method", "method"), ("backend", "backend"), ("family", "family")]
        metric_cols: list[tuple[pd.DataFrame, str, str, str]] = []
        if len(lat):
            metric_cols += [
                (at_l, "latency_ms", "latency", f"median at {where['latency']}"),
                (at_l, "speedup_vs_dense", "speedup vs dense", f"vs mha/sdpa at {where['latency']}"),
                (at_l, "tflops", "TFLOP/s", f"useful FLOPs / time at {where['latency']}"),
            ]
            if has_peak:
                metric_cols.append((at_l, "pct_peak", "% of peak", "of the device's dense peak"))
        if len(mem):
            metric_cols.append((at_m, "peak_mem_bytes", "peak memory", f"at {where['memory']}"))
        if len(fl):
            metric_cols.append((at_f, "flops_useful", "FLOPs", f"useful, analytic, at {where['flops']}"))
        cols += [(label, tip) for _, _, label, tip in metric_cols]
        cols += [(D.proxy_label(s, m), f"{s} {m}: mean over the suite's cases") for s, m in proxies]
        has_corr = bool((dd["suite"] == "correctness").any())
        if has_corr:
            cols.append(("correctness", "fused vs reference, all correctness cases"))
        if len(lat):
            cols += [
                ("fast₁", "share of latency cases correct and faster than dense"),
                ("win rate", "pairwise wins on shared latency shapes"),
            ]
        board = D.Table(f"lb-{_slug(dev, set())}", cols)
        agg = D.Table(
            f"agg-{_slug(dev, set())}",
            [
                ("method", "method"),
                ("backend", "backend"),
                ("family", "family"),
                ("cases", "latency cases"),
                ("ok", "cases that ran ok"),
                ("fast₀.₅", "correct and > 0.5× dense"),
                ("fast₁", "correct and faster than dense"),
                ("fast₂", "correct and > 2× dense"),
                ("speedup range", "min–median–max over shapes"),
                ("win rate", "pairwise wins on shared shapes"),
            ],
        )
        for pair, method, backend in D.pairs_of(dd):
            fam = str(dd.loc[dd["pair"] == pair, "family"].iloc[0])
            head = [
                D.Cell(method, method, "name", href=self.method_href.get(method, "")),
                D.Cell(backend, backend),
                D.Cell(fam, fam),
            ]
            cells = list(head)
            cells += [D.pick_cell(rows, pair, metric) for rows, metric, _, _ in metric_cols]
            cells += [D.pick_cell(dd[dd["suite"] == s], pair, m, agg="mean") for s, m in proxies]
            if has_corr:
                cells.append(self.correctness_cell(dd[(dd["suite"] == "correctness") & (dd["pair"] == pair)]))
            if len(lat):
                f1, n = D.fast_p(lat, pair, 1.0, wrong)
                cells += [
                    D.fraction_cell(f1, n, "fast₁"),
                    D.fraction_cell(wins.get(pair, math.nan), n, "win rate"),
                ]
            board.rows.append((fam, cells))
            if len(lat) and (lat["pair"] == pair).any():
                mine = lat[lat["pair"] == pair]
                n_cases = mine["case_id"].nunique()
                n_ok = mine[(mine["metric"] == "latency_ms") & (mine["status"] == "ok")]["case_id"].nunique()
                sp = mine[(mine["metric"] == "speedup_vs_dense") & (mine["status"] == "ok")]["value"].dropna()
                rng = (
                    D.Cell(f"{sp.min():.3g}–{np.median(sp):.3g}–{sp.max():.3g}×", float(np.median(sp)), "num")
                    if len(sp)
                    else D.empty_cell()
                )
                fr = [
                    D.fraction_cell(*D.fast_p(lat, pair, p, wrong), what)
                    for p, what in ((0.5, "fast₀.₅"), (1.0, "fast₁"), (2.0, "fast₂"))
                ]
                agg.rows.append(
                    (
                        fam,
                        [
                            *head,
                            D.Cell(str(n_cases), float(n_cases), "num"),
                            D.Cell(str(n_ok), float(n_ok), "num"),
                            *fr,
                            rng,
                            D.fraction_cell(wins.get(pair, math.nan), n_cases, "win rate"),
                        ],
                    )
                )
        return board, agg, {"latency": hl, "memory": hm}

    @staticmethod
    def correctness_cell(rows: pd.DataFrame) -> D.Cell:
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
        errs = rows[(rows["metric"] == "max_abs_err") & (rows["status"] == "ok")]["value"].dropna()
        worst = float(errs.max()) if len(errs) else math.nan
        tip = f"{n_ok} of {len(cases)} cases ok" + (f"; worst max abs err {worst:.2e}" if errs.size else "")
        return D.Cell(f"ok {n_ok}/{len(cases)}", worst if errs.size else None, "st st-ok", tip)

    def overview_sections(self) -> list[Section]:
        out = []
        for dev in self.devices:
            board, agg, shapes = self.leaderboard(dev)
            dd = self.df[self.df["device"] == dev]
            sec = Section(dev, f"dev-{_slug(dev, set())}", tables=[board])
            if shapes["latency"]:
                sec.lines.append(
                    f"Latency columns at {D.shape_label(shapes['latency'])} (the shape most "
                    f"method/backends ran); other shapes on the suite pages."
                )
            if agg.rows:
                agg.caption = "Aggregates over every latency shape (no geometric mean: fast_p and win rate)"
                sec.tables.append(agg)
            for suite, metric, what in (
                ("latency", "latency_ms", "latency (ms)"),
                ("memory", "peak_mem_bytes", "peak memory (bytes)"),
            ):
                rows = dd[dd["suite"] == suite]
                if rows.empty:
                    continue
                sel, g = D.groups_without(rows, ["seq_len"])[0]
                p = self.plots.lines(
                    D.series(g, metric),
                    title=f"{what} vs sequence length — {dev}",
                    xlabel="sequence length",
                    ylabel=what,
                )
                if p:
                    sec.plots.append(p)
            sec.plots += self.fig.pareto_plots(dd, dev, shapes["latency"])
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
            tid = f"t-{_slug(suite + '-' + dev, set())}"
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
    def method_info(self, method: str) -> dict[str, Any]:
        entry = self.entries.get(method)
        fams = sorted(set(self.df.loc[self.df["method"] == method, "family"]))
        if entry is None:
            return {"registered": False, "family": ", ".join(fams) or "unknown", "claims": []}
        s, c = entry.spec, entry.spec.capabilities
        return {
            "registered": True,
            "title": s.title,
            "family": s.family,
            "kind": s.kind,
            "paper": f"{s.paper.title} ({s.paper.year})",
            "url": _safe_url(s.paper.url),
            "defaults": D.params_label(json.dumps(dict(s.defaults), sort_keys=True, default=str)) or "none",
            "backends": ", ".join(b.value for b in entry.backends),
            "capabilities": [
                ("causal", c.causal),
                ("non-causal", c.noncausal),
                ("GQA", c.gqa),
                ("backward", c.backward),
            ],
            "dims": ", ".join(f"{d}-D" for d in c.dims),
            "dtypes": ", ".join(c.dtypes),
            "claims": list(s.claims),
        }

    def method_sections(self, method: str) -> list[Section]:
        mine = self.df[self.df["method"] == method]
        out = []
        for dev in self.devices:
            md = mine[mine["device"] == dev]
            if md.empty:
                continue
            sec = Section(
                f"Measured on {dev}",
                f"m-{_slug(dev, set())}",
                tables=[self.measured_table(method, dev), self.capability_table(md, dev)],
            )
            lat = self.df[(self.df["device"] == dev) & (self.df["suite"] == "latency")]
            lat = lat[(lat["method"] == method) | (lat["pair"] == D.DENSE)]
            if len(lat):
                sel, g = D.groups_without(lat, ["seq_len"])[0]
                p = self.plots.lines(
                    D.series(g, "latency_ms"),
                    title=f"{method}: latency vs sequence length — {dev}",
                    xlabel="sequence length",
                    ylabel="latency (ms)",
                )
                if p:
                    sec.plots.append(p)
            out.append(sec)
        for suite in sorted(set(mine["suite"])):
            out += self.suite_sections(suite, method)
        return out

    def measured_table(self, method: str, dev: str) -> D.Table:
        """Headline measurements per backend, to read next to the paper's claims."""
        dd = self.df[self.df["device"] == dev]
        lat = dd[dd["suite"] == "latency"]
        mem = dd[(dd["suite"] == "memory") & (dd["metric"] == "peak_mem_bytes") & (dd["status"] == "ok")]
        wrong = D.wrong_pairs(dd)
        proxies = D.proxy_columns(dd[dd["method"] == method])
        t = D.Table(
            f"meas-{_slug(method + dev, set())}",
            [
                ("backend", "backend"),
                ("speedup vs dense", "min–median–max over latency shapes"),
                ("at longest N", "speedup vs dense at the longest measured sequence"),
                ("memory vs dense", "peak memory / mha-sdpa peak memory at the longest shared shape"),
                ("fast₁", "share of latency cases correct and faster than dense"),
                ("correctness", "fused vs reference"),
            ]
            + [(D.proxy_label(s, m), f"{s} {m}: mean") for s, m in proxies],
            caption="What this harness measured",
        )
        for pair, _, backend in D.pairs_of(dd[dd["method"] == method]):
            sp = lat[(lat["pair"] == pair) & (lat["metric"] == "speedup_vs_dense") & (lat["status"] == "ok")]
            rng = (
                D.Cell(
                    f"{sp['value'].min():.3g}–{sp['value'].median():.3g}–{sp['value'].max():.3g}×",
                    float(sp["value"].median()),
                    "num",
                )
                if len(sp)
                else D.empty_cell()
            )
            longest = D.value_cell(sp.sort_values("seq_len").iloc[-1]) if len(sp) else D.empty_cell()
            ratio = _mem_ratio(mem, pair)
            f1, n = D.fast_p(lat, pair, 1.0, wrong)
            cells = [
                D.Cell(backend, backend),
                rng,
                longest,
                ratio,
                D.fraction_cell(f1, n, "fast₁"),
                self.correctness_cell(dd[(dd["suite"] == "correctness") & (dd["pair"] == pair)]),
            ]
            cells += [D.pick_cell(dd[dd["suite"] == s], pair, m, agg="mean") for s, m in proxies]
            t.rows.append((str(dd.loc[dd["pair"] == pair, "family"].iloc[0]), cells))
        return t

    def capability_table(self, md: pd.DataFrame, dev: str) -> D.Table:
        """Backends × suites: how many cases ran ok, and why the others did not."""
        suites = sorted(set(md["suite"]))
        t = D.Table(
            f"cap-{_slug(str(md['method'].iloc[0]) + dev, set())}",
            [("backend", "backend")] + [(s, f"case statuses in {s}") for s in suites],
            caption="Capability matrix (case statuses)",
        )
        for backend, g in md.groupby("backend"):
            cells = [D.Cell(str(backend), str(backend))]
            for s in suites:
                gs = g[g["suite"] == s]
                if gs.empty:
                    cells.append(D.empty_cell())
                    continue
                st = gs.groupby("case_id")["status"].agg(lambda x: next((v for v in x if v != "ok"), "ok"))
                counts = st.value_counts()
                worst = next((k for k in D.ERROR_STATUSES if k in counts), "ok")
                errs = "; ".join(sorted(set(gs.loc[gs["status"] != "ok", "error"]) - {""}))[:500]
                cells.append(
                    D.Cell(
                        " · ".join(f"{k} {v}" for k, v in counts.items()),
                        float(counts.get("ok", 0)),
                        f"st st-{worst}",
                        errs,
                    )
                )
            t.rows.append((str(g["family"].iloc[0]), cells))
        return t

    def methods_table(self) -> D.Table:
        t = D.Table(
            "methods",
            [
                ("method", "name"),
                ("title", "title"),
                ("family", "family"),
                ("paper", "paper"),
                ("backends", "registered backends"),
                ("devices", "measured on"),
                ("rows", "result rows"),
            ],
        )
        for method, href in self.method_href.items():
            info = self.method_info(method)
            mine = self.df[self.df["method"] == method]
            t.rows.append(
                (
                    info["family"],
                    [
                        D.Cell(method, method, "name", href=href),
                        D.Cell(info.get("title", "not registered here")),
                        D.Cell(info["family"], info["family"]),
                        D.Cell(info.get("paper", ""), href=info.get("url", "")),
                        D.Cell(info.get("backends", ", ".join(sorted(set(mine["backend"]))))),
                    ]
                    + [
                        D.Cell(", ".join(sorted(set(mine["device"]))) or "not measured"),
                        D.Cell(str(len(mine)), float(len(mine)), "num"),
                    ],
                )
            )
        return t

    # -- devices --------------------------------------------------------------------------
    def device_sections(self) -> list[Section]:
        lat = self.df[(self.df["suite"] == "latency") & (self.df["status"] == "ok")]
        intro = Section("Devices", "devices")
        for dev in self.devices:
            dd = self.df[self.df["device"] == dev]
            kinds = ", ".join(sorted(set(dd["device_kind"]) - {""})) or "?"
            peaks = {dt: _peak(dev, dt) for dt in sorted(set(dd["dtype"]) - {""})}
            known = ", ".join(f"{dt} {p:g} TFLOP/s" for dt, p in peaks.items() if p)
            intro.lines.append(f"{dev} ({kinds}): dense peak {known or 'unknown (no % of peak)'}")
        if len(self.devices) < 2 or lat.empty:
            intro.lines.append("Results from one device only: nothing to set side by side yet.")
            return [intro]
        key = ["pair", "method", "backend", "family", "params", *D.SHAPE]
        per = lat.pivot_table(index=key, columns=["device", "metric"], values="value", aggfunc="first", dropna=False)
        devs = [d for d in self.devices if d in set(lat["device"])]
        cols = [("method", "method"), ("backend", "backend"), ("family", "family"), ("shape", "workload")]
        for d in devs:
            cols += [
                (f"{d}: latency", "median ms"),
                (f"{d}: % of peak", "TFLOP/s over the device's dense peak"),
                (f"{d}: speedup", "vs mha/sdpa on the same device"),
            ]
        t = D.Table("xdev", cols, caption="Same method and shape on each device, normalised to the device")
        bars: dict[str, dict[str, float]] = {}
        for idx, r in per.iterrows():
            k = dict(zip(key, idx, strict=True))
            have = [d for d in devs if pd.notna(r.get((d, "latency_ms"), np.nan))]
            if len(have) < 2:
                continue
            cells = [
                D.Cell(k["method"], k["method"], "name", href=self.method_href.get(k["method"], "")),
                D.Cell(k["backend"], k["backend"]),
                D.Cell(k["family"], k["family"]),
                D.Cell(D.shape_label(k), _f(k["seq_len"])),
            ]
            for d in devs:
                lat_ms = r.get((d, "latency_ms"), np.nan)
                pct = r.get((d, "pct_peak"), np.nan)
                if pd.isna(pct):
                    peak, tf = _peak(d, str(k["dtype"])), r.get((d, "tflops"), np.nan)
                    pct = 100 * tf / peak if peak and pd.notna(tf) else np.nan
                sp = r.get((d, "speedup_vs_dense"), np.nan)
                cells += [
                    _cell("latency_ms", "ms", lat_ms),
                    _cell("pct_peak", "%", pct),
                    _cell("speedup", "x", sp),
                ]
                if pd.notna(pct) or pd.notna(sp):
                    bars.setdefault(f"{k['pair']} N{_f(k['seq_len']) or 0:g}", {})[d] = (
                        float(pct) if pd.notna(pct) else float(sp)
                    )
            t.rows.append((k["family"], cells))
        sec = Section("Same shape across devices", "xdev", tables=[t])
        if not t.rows:
            sec.lines.append("No (method, backend, shape) was measured on two devices.")
        else:
            sec.lines.append(
                "Normalised to each device: % of its dense peak where the peak is known, and "
                "speedup against the dense baseline measured on the same device."
            )
            longest = sorted(bars, key=lambda s: float(s.rsplit("N", 1)[1]))[-24:]
            p = self.plots.bars(
                {k: bars[k] for k in longest},
                title="% of peak (or speedup vs dense) by device",
                ylabel="% of peak / speedup",
            )
            if p:
                sec.plots.append(p)
        return [intro, sec]


def _f(x: Any) -> float | None:
    return None if x is None or pd.isna(x) else float(x)


def _cell(metric: str, unit: str, v: Any) -> D.Cell:
    return D.empty_cell() if v is None or pd.isna(v) else D.Cell(D.fmt(metric, unit, float(v)), float(v), "num")


def _mem_ratio(mem: pd.DataFrame, pair: str) -> D.Cell:
    mine, dense = mem[mem["pair"] == pair], mem[mem["pair"] == D.DENSE]
    shared = mine.merge(dense, on=D.SHAPE, suffixes=("", "_d"))
    if shared.empty or pair == D.DENSE:
        return D.empty_cell()
    r = shared.sort_values("seq_len").iloc[-1]
    ratio = float(r["value"]) / float(r["value_d"]) if r["value_d"] else math.nan
    return D.Cell(
        f"{ratio:.3g}×",
        ratio,
        "num",
        f"at {D.shape_label(r)}: {D.fmt('peak_mem_bytes', 'bytes', r['value'])}"
        f" vs {D.fmt('peak_mem_bytes', 'bytes', r['value_d'])}",
    )


def build_site(inputs: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str]) -> Path:
    """Render results under `inputs` (folders, Parquet or pytest-benchmark JSON) into `out_dir`.

    Returns:
        The path of `index.html`.
    Raises:
        attnbench.results.SchemaError: a file of an unknown schema major version.
        FileNotFoundError: an input does not exist.
    """
    df = load_inputs(inputs)
    out = Path(out_dir)
    if (out / "plots").is_dir():
        shutil.rmtree(out / "plots")
    out.mkdir(parents=True, exist_ok=True)
    return SiteBuilder(df, out).build()
