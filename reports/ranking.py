"""The ranked overview: one row per method (its best fused backend), ranked by a headline metric.

Pure (a `Leaderboard` in, a ranked `Table` out). A method's best backend is the one with the
lowest time (the timing suite's `role="time"` metric) at the headline shape; reference backends
only stand in when a method has no other. Its other backends are the row's detail rows. The
table can be ranked by any headline column with a direction (speed and accuracy proxies alike);
the default is the speedup over the dense baseline, best first.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from attnbench.reports import data as D
from attnbench.reports.leaderboard import Leaderboard
from attnbench.reports.meaning import catalog

REFERENCE = "reference"  # the unfused backend every method registers (attnbench.spec.Backend.REFERENCE)


def _time_of(cells: list[D.Cell], col: int | None) -> float:
    c = cells[col] if col is not None else None
    return float(c.sort) if c is not None and isinstance(c.sort, float) and math.isfinite(c.sort) else math.inf


def rank_keys(lb: Leaderboard) -> list[tuple[int, str, int]]:
    """(board column, label, direction) of the columns the overview can rank by: headline metrics and proxies."""
    cat = catalog()
    keys: list[tuple[int, str, int]] = []
    metrics = [m for _, m in lb.columns] + [m for _, m in lb.proxies]
    for i, metric in enumerate(metrics):
        direction = cat.table.direction(metric)
        if direction is None:
            continue
        keys.append((3 + i, lb.board.columns[3 + i][0], 1 if cat.higher_is_better(metric) else -1))
    return keys


def _sorted(rows: list[int], key: Callable[[int], D.Cell], direction: int) -> list[int]:
    def k(i: int) -> tuple[int, float]:
        c = key(i)
        v = c.sort if isinstance(c.sort, float) and math.isfinite(c.sort) else None
        return (1, 0.0) if v is None else (0, -direction * v)

    return sorted(rows, key=k)


def ranked(lb: Leaderboard) -> D.Table:
    """The overview table: rank, then the board's columns; one row per method, best backend first."""
    cat = catalog()
    board = lb.board
    time_col = next(
        (3 + i for i, (s, m) in enumerate(lb.columns) if s == lb.timing_suite and m == cat.time_metric), None
    )
    by_method: dict[str, list[tuple[str, list[D.Cell]]]] = {}
    for fam, cells in board.rows:
        by_method.setdefault(cells[0].text, []).append((fam, cells))
    keys = rank_keys(lb)
    speed = next((k for k in keys if k[0] - 3 < len(lb.columns) and _is_speedup(lb, k[0])), None)
    default = speed or (keys[0] if keys else None)
    if default is not None:  # the default key first in the menu
        keys = [default] + [k for k in keys if k != default]
    where = D.shape_label(lb.timing_shape) if lb.timing_shape else "the headline shape"
    t = D.Table(
        board.id,
        [("#", "rank by the chosen metric"), *board.columns[:1]]
        + [("backend", f"fastest fused backend (lowest {cat.label(cat.time_metric or '')} at {where}); ▸: the others")]
        + board.columns[2:],
        caption=board.caption,
    )
    t.rank_keys = [(c + 1, label, d) for c, label, d in keys]  # shifted by the rank column
    groups = []
    for rows in by_method.values():
        fused = [r for r in rows if r[1][1].text != REFERENCE] or rows
        best = min(fused, key=lambda r: _time_of(r[1], time_col))  # ties: display order (dense first)
        groups.append((best, [r for r in rows if r is not best]))
    order = list(range(len(groups)))
    if default is not None:
        order = _sorted(order, lambda i: groups[i][0][1][default[0]], default[2])
    for rank, i in enumerate(order, 1):
        (fam, cells), others = groups[i]
        t.rows.append((fam, [D.Cell(str(rank), float(rank), "rank"), *cells]))
        t.children.append([(f, [D.Cell("", None, "rank"), *c]) for f, c in others])
    return t


def _is_speedup(lb: Leaderboard, col: int) -> bool:
    spec = catalog().spec(lb.columns[col - 3][1])
    return spec is not None and spec.role == "speedup"
