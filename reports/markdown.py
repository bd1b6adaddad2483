"""Markdown summary of results (for READMEs and PR comments): the ranked leaderboard of each device.

Renders the same model as the site's overview (`reports.leaderboard`, `reports.ranking`): one row
per method, its fastest fused backend, ranked by the default headline metric; no file is written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from attnbench.benchjson import load_inputs
from attnbench.markdown import md_escape
from attnbench.reports import data as D
from attnbench.reports.leaderboard import Results, leaderboard, run_summary
from attnbench.reports.ranking import ranked


def table_markdown(t: D.Table) -> str:
    """A report table as a GitHub Markdown table (status cells keep their status word)."""
    head = "| " + " | ".join(md_escape(label) for label, _ in t.columns) + " |"
    sep = (
        "|"
        + "|".join(
            "---:" if any(c.cls == "num" for _, cells in t.rows[:1] for c in cells[i : i + 1]) else "---"
            for i in range(len(t.columns))
        )
        + "|"
    )
    body = ["| " + " | ".join(md_escape(c.text) for c in cells) + " |" for _, cells in t.rows]
    return "\n".join([head, sep, *body])


def markdown_summary(inputs: Sequence[str | os.PathLike[str]]) -> str:
    """One leaderboard per device, as Markdown.

    Raises:
        attnbench.results.SchemaError: a file of an unknown schema major version.
        FileNotFoundError: an input does not exist.
    """
    df = load_inputs(inputs)
    if df.empty:
        return "## attnbench results\n\nNo result rows.\n"
    res = Results.of(df)
    parts = ["## attnbench results", ""]
    parts += [f"> {md_escape(w)}" for w in res.warnings]
    for run in run_summary(res):
        lb = leaderboard(res, run["device"])
        parts += [
            f"### {md_escape(run['device'])}",
            "",
            f"{run['runs']} run(s), {run['rows']} rows; case statuses: {md_escape(run['statuses'])}.",
        ]
        if lb.timing_note():
            parts.append(
                f"{md_escape(lb.timing_note())}; "
                f"fast₁ = share of {md_escape(lb.timing_suite or '')} cases correct and faster than dense."
            )
        t = ranked(lb)
        if t.rank_keys:
            parts.append(
                f"One row per method (its fastest fused backend), ranked by {md_escape(t.rank_keys[0][1])}; "
                "the site lists every backend and ranks by any column."
            )
        parts += ["", table_markdown(t), ""]
    return "\n".join(parts)
