"""Accuracy against effective density (Zoology style), and which proxy cases were dense in fact.

Proxy suites record `effective_density` (the fraction of allowed (query, key) pairs a sparse
method attended at evaluation, `attnbench.density`) beside their scores. Per proxy and headline
score this draws one line per method over its cases' densities, with the dense baseline's score as
the ceiling; a case whose sparse method attended ≥ DENSE_AT of the pairs measured the dense
mechanism, so its row is greyed with the reason.
"""

from __future__ import annotations

import pandas as pd

from attnbench.metrics import DENSE_BASELINE
from attnbench.proxy.suite import DENSE_AT  # the ladder's threshold: one meaning of "dense at this length"
from attnbench.reports.meaning import catalog
from attnbench.reports.plots import Plot, PlotWriter

METRIC = "effective_density"
DENSE_METHOD = DENSE_BASELINE.split("/")[0]  # mha: the ceiling of every accuracy-vs-density curve
GREY = "dense"  # the css class of a greyed cell


def dense_reason(value: float) -> str:
    return f"dense at this length: effective density {value:.2f}"


def case_densities(rows: pd.DataFrame) -> pd.Series:
    """case_id → effective density of every ok case that recorded one."""
    d = rows[(rows["metric"] == METRIC) & (rows["status"] == "ok") & rows["value"].notna()]
    return d.groupby("case_id")["value"].mean()


INACTIVE = "inactive: the intervention found nothing to act on (e.g. no sink detected), so it equals its base"


def dense_cases(rows: pd.DataFrame) -> dict[str, str]:
    """case_id → reason, for the cases that measure no mechanism: a sparse method that attended ≥ DENSE_AT
    of the pairs, or an input-gated intervention that never acted (`intervention_active` = 0)."""
    out = {str(c): dense_reason(float(v)) for c, v in case_densities(rows).items() if v >= DENSE_AT}
    idle = rows[(rows["metric"] == "intervention_active") & (rows["status"] == "ok") & (rows["value"] == 0)]
    return {**out, **dict.fromkeys(map(str, idle["case_id"].unique()), INACTIVE)}


def pair_note(rows: pd.DataFrame, pair: str) -> tuple[bool, str]:
    """(grey, note) of a method/backend's proxy cell: grey when every case with a density was dense."""
    mine = rows[rows["pair"] == pair]
    dens = case_densities(mine)
    if dens.empty:
        return False, ""
    dense = dens[dens >= DENSE_AT]
    if len(dense) == len(dens):
        return True, dense_reason(float(dens.min()))
    if len(dense):
        return False, f"{len(dense)} of {len(dens)} cases dense at their length (effective density ≥ {DENSE_AT})"
    return False, f"effective density {dens.min():.2f}–{dens.max():.2f}"


def curves(rows: pd.DataFrame, suite: str, metric: str) -> dict[str, list[tuple[float, float]]]:
    """method/backend → sorted (effective density, score) points of `suite`'s `metric`, one per case
    (seeds averaged), plus the dense baseline as a flat ceiling across the densities seen."""
    ok = rows[(rows["suite"] == suite) & (rows["status"] == "ok") & rows["value"].notna()]
    dens = case_densities(ok)
    score = ok[ok["metric"] == metric].groupby("case_id")["value"].mean()
    pair = ok.drop_duplicates("case_id").set_index("case_id")["pair"]
    both = pd.DataFrame({"x": dens, "y": score}).dropna()
    if both.empty:
        return {}
    both["pair"] = pair.reindex(both.index)
    out = {}
    for name, g in both.groupby("pair"):
        pts = g.groupby("x")["y"].mean()
        out[str(name)] = [(float(x), float(y)) for x, y in pts.items()]
    method = ok.drop_duplicates("case_id").set_index("case_id")["method"]
    ceiling = score[[c for c in score.index if method.get(c) == DENSE_METHOD]]  # any backend (proxies: reference)
    if len(ceiling):
        lo = min(x for pts in out.values() for x, _ in pts)
        out[f"{DENSE_METHOD} (dense ceiling)"] = [(min(lo, 1.0), float(ceiling.mean())), (1.0, float(ceiling.mean()))]
    return out


def density_plots(plots: PlotWriter, dd: pd.DataFrame, dev: str) -> list[Plot]:
    """One accuracy-vs-density figure per proxy headline score that has densities recorded."""
    cat = catalog()
    out = []
    for suite, metric in cat.proxy_columns(dd):
        lines = curves(dd, suite, metric)
        if not any(not k.endswith("(dense ceiling)") for k in lines):
            continue
        what = cat.proxy_label(suite, metric)
        p = plots.lines(
            lines,
            title=f"{what} vs effective density — {dev}",
            xlabel="effective density (fraction of allowed query–key pairs attended)",
            ylabel=what,
            logx=False,
            logy=False,
            caption=f"{suite}: {what} vs the density each sparse method really attended; "
            f"{DENSE_METHOD} is the dense ceiling — {dev}",
        )
        if p:
            out.append(p)
    return out
