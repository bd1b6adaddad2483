"""The history model: a method's headline metrics across the commits (`git_sha`) the results span.

Pure (every run's rows in, per metric a `Table` and line series out); only built when the rows of
a method carry two or more commits. Kernel metrics are read at their suite's headline shape on
each device, proxy metrics are means over the suite's cases; one point per commit (its earliest
run's date), one series per backend (and device, when several).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from attnbench.reports import data as D
from attnbench.reports.meaning import catalog


@dataclass
class MetricHistory:
    suite: str
    metric: str
    label: str
    table: D.Table
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # x = commit's position
    ticks: tuple[tuple[float, str], ...] = ()  # (x, short sha)


def commits(rows: pd.DataFrame) -> list[tuple[str, pd.Timestamp]]:
    """(git_sha, first run time) of the commits in `rows`, oldest first; rows without a sha are left out."""
    shas = rows["git_sha"].astype(object).where(rows["git_sha"].notna(), "").astype(str)
    when = pd.to_datetime(rows["created_at"], utc=True)
    firsts = when[shas != ""].groupby(shas[shas != ""]).min()
    return sorted(((str(s), t) for s, t in firsts.items()), key=lambda st: (st[1], st[0]))


def has_history(rows: pd.DataFrame) -> bool:
    return len(commits(rows)) >= 2


def _metrics(mine: pd.DataFrame) -> list[tuple[str, str, bool]]:
    """(suite, metric, at headline shape) of the headline metrics the method has rows of."""
    cat = catalog()
    out = [(s, spec.name, True) for s, spec in cat.board_columns]
    out += [(s, m, False) for s, m in cat.proxy_columns(mine)]
    have = set(zip(mine["suite"], mine["metric"], strict=True))
    return [(s, m, at) for s, m, at in out if (s, m) in have]


def method_history(everything: pd.DataFrame, method: str) -> list[MetricHistory]:
    """Per headline metric of `method`: a commits × series table and its series.

    `everything`: the prepared rows of every run (not only each case's latest).
    """
    cat = catalog()
    mine = everything[everything["method"] == method]
    order = commits(mine)
    if len(order) < 2:
        return []
    pos = {sha: i for i, (sha, _) in enumerate(order)}
    multi_dev = mine["device"].nunique() > 1
    fam = str(mine["family"].iloc[0])
    out = []
    for suite, metric, at_shape in _metrics(mine):
        points: dict[str, dict[int, float]] = {}
        for dev, dd in everything[everything["suite"] == suite].groupby("device"):
            rows = dd[(dd["method"] == method) & (dd["metric"] == metric) & (dd["status"] == "ok")]
            if at_shape:
                rows = D.at_shape(rows, D.headline_shape(dd))
            rows = rows[rows["value"].notna() & rows["git_sha"].isin(list(pos))]
            for (pair, sha), g in rows.groupby(["pair", "git_sha"]):
                name = f"{pair} @ {dev}" if multi_dev else str(pair)
                points.setdefault(name, {})[pos[str(sha)]] = float(g["value"].mean())
        if not points:
            continue
        names = sorted(points)
        unit = cat.unit(metric)
        where = "at the suite's headline shape" if at_shape else "mean over the suite's cases"
        t = D.Table(
            f"hist-{D.slug(suite + '-' + metric, set())}",
            [("commit", "git sha"), ("date", "earliest run of the commit (UTC)")] + [(n, where) for n in names],
            caption=f"{cat.label(metric)} ({suite}, {where}) per commit",
        )
        for i, (sha, when) in enumerate(order):
            cells = [D.Cell(sha[:12], float(i), title=sha), D.Cell(f"{when:%Y-%m-%d %H:%M}", f"{when:%Y%m%d%H%M}")]
            for n in names:
                v = points[n].get(i)
                cells.append(D.empty_cell() if v is None else D.Cell(D.fmt(metric, unit, v), v, "num"))
            t.rows.append((fam, cells))
        series = {n: sorted((float(i + 1), v) for i, v in p.items() if not math.isnan(v)) for n, p in points.items()}
        ticks = tuple((float(i + 1), sha[:8]) for i, (sha, _) in enumerate(order))
        out.append(MetricHistory(suite, metric, cat.label(metric), t, series, ticks))
    return out
