"""The method pages' model: registry facts, what the harness measured, the capability matrix.

Pure (frames and registry entries in, dicts and `Table`s out); `reports.site` renders them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

import pandas as pd

from attnbench.metrics import DENSE_BASELINE
from attnbench.reports import data as D
from attnbench.reports.leaderboard import Results, correctness_cell, speedup_range
from attnbench.reports.meaning import catalog


def _safe_url(url: str) -> str:
    return url if re.match(r"^https?://", url or "") else ""


def method_info(res: Results, method: str) -> dict[str, Any]:
    """The registered spec of `method` (title, paper, capabilities, claims), or its families only."""
    entry = res.entries.get(method)
    fams = sorted(set(res.df.loc[res.df["method"] == method, "family"]))
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


def measured_table(res: Results, method: str, dev: str) -> D.Table:
    """Headline measurements per backend, to read next to the paper's claims."""
    cat = catalog()
    dd = res.on(dev)
    timing, speedup = cat.timing_suite, cat.speedup_metric
    lat = dd[dd["suite"] == timing]
    wrong = D.wrong_pairs(dd)
    proxies = cat.proxy_columns(dd[dd["method"] == method])
    ratios = cat.dense_ratios()
    cols = [("backend", "backend")]
    if timing and speedup:
        sp_label = cat.label(speedup)
        cols += [
            (sp_label, f"min–median–max over {timing} shapes"),
            ("at longest N", f"{sp_label} at the longest measured sequence"),
        ]
    for suite, spec in ratios:
        label = suite if sum(s == suite for s, _ in ratios) == 1 else spec.title()
        what = spec.title()
        cols.append(
            (f"{label} vs dense", f"{what} / {DENSE_BASELINE.replace('/', '-')} {what} at the longest shared shape")
        )
    if timing:
        cols.append(("fast₁", f"share of {timing} cases correct and faster than dense"))
    cols += [(s, "fused vs reference") for s in cat.error_suites]
    cols += [(cat.proxy_label(s, m), f"{s} {m}: mean") for s, m in proxies]
    t = D.Table(f"meas-{D.slug(method + dev, set())}", cols, caption="What this harness measured")
    for pair, _, backend in D.pairs_of(dd[dd["method"] == method]):
        cells = [D.Cell(backend, backend)]
        if timing and speedup:
            sp = lat[(lat["pair"] == pair) & (lat["metric"] == speedup) & (lat["status"] == "ok")]
            longest = D.value_cell(sp.sort_values("seq_len").iloc[-1]) if len(sp) else D.empty_cell()
            cells += [speedup_range(sp, speedup), longest]
        for suite, spec in ratios:
            rows = dd[(dd["suite"] == suite) & (dd["metric"] == spec.name) & (dd["status"] == "ok")]
            cells.append(dense_ratio(rows, pair))
        if timing:
            f1, n = D.fast_p(lat, pair, 1.0, wrong, speedup)
            cells.append(D.fraction_cell(f1, n, "fast₁"))
        cells += [
            correctness_cell(dd[(dd["suite"] == s) & (dd["pair"] == pair)], cat.role_metric(s, "error"))
            for s in cat.error_suites
        ]
        cells += [D.pick_cell(dd[dd["suite"] == s], pair, m, agg="mean") for s, m in proxies]
        t.rows.append((str(dd.loc[dd["pair"] == pair, "family"].iloc[0]), cells))
    return t


def dense_ratio(rows: pd.DataFrame, pair: str) -> D.Cell:
    """`pair`'s value over the dense baseline's at the longest shape both measured (`rows`: one metric, ok)."""
    mine, dense = rows[rows["pair"] == pair], rows[rows["pair"] == DENSE_BASELINE]
    shared = mine.merge(dense, on=D.SHAPE, suffixes=("", "_d"))
    if shared.empty or pair == DENSE_BASELINE:
        return D.empty_cell()
    r = shared.sort_values("seq_len").iloc[-1]
    ratio = float(r["value"]) / float(r["value_d"]) if r["value_d"] else math.nan
    metric, unit = str(r["metric"]), str(r["unit"] or "")
    return D.Cell(
        f"{ratio:.3g}×",
        ratio,
        "num",
        f"at {D.shape_label(r)}: {D.fmt(metric, unit, r['value'])} vs {D.fmt(metric, unit, r['value_d'])}",
    )


def capability_table(md: pd.DataFrame, dev: str) -> D.Table:
    """Backends × suites: how many cases ran ok, and why the others did not."""
    suites = sorted(set(md["suite"]))
    t = D.Table(
        f"cap-{D.slug(str(md['method'].iloc[0]) + dev, set())}",
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


# Papers the spec cards discuss that are deliberately not registered as methods: (name, paper title, year,
# arXiv id, why not, where it is written up). Shown at the end of the method index so the gap is visible.
NOT_REGISTERED: tuple[tuple[str, str, int, str, str, str], ...] = (
    ("moon", "MOON: Generative MLLM-based Multimodal Representation Learning for E-commerce Product "
     "Understanding", 2025, "2508.11999",
     "not an attention mechanism of its own: its guided mixture-of-experts routes tokens to experts the "
     "way MoH routes heads (measured as moh); the rest is data, detection and contrastive training",
     "docs/moon.md"),
)


def not_registered_rows(listed: Mapping[str, str]) -> list[tuple[str, list[D.Cell]]]:
    """Method-index rows for NOT_REGISTERED (except names `listed` already): the paper and the reason."""
    return [("not registered", [
        D.Cell(name, name, "name", title=f"written up in {doc}"),
        D.Cell(title),
        D.Cell("not registered", "not registered"),
        D.Cell(f"{title} ({year})", href=_safe_url(f"https://arxiv.org/abs/{arxiv}")),
        D.Cell(f"none: {why}", title=why),
        D.Cell("not measured"),
        D.Cell("0", 0.0, "num"),
    ]) for name, title, year, arxiv, why, doc in NOT_REGISTERED if name not in listed]


def methods_table(res: Results, method_href: Mapping[str, str]) -> D.Table:
    """Every method (registered here or measured elsewhere): title, family, paper, backends, devices."""
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
    for method, href in method_href.items():
        info = method_info(res, method)
        mine = res.df[res.df["method"] == method]
        t.rows.append(
            (
                info["family"],
                [
                    D.Cell(method, method, "name", href=href),
                    D.Cell(info.get("title", "not registered here")),
                    D.Cell(info["family"], info["family"]),
                    D.Cell(info.get("paper", ""), href=info.get("url", "")),
                    D.Cell(info.get("backends", ", ".join(sorted(set(mine["backend"]))))),
                    D.Cell(", ".join(sorted(set(mine["device"]))) or "not measured"),
                    D.Cell(str(len(mine)), float(len(mine)), "num"),
                ],
            )
        )
    t.rows.extend(not_registered_rows(method_href))
    return t
