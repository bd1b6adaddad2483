"""Markdown summary of results (for READMEs and PR comments): the leaderboard of each device."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from attnbench.benchjson import load_inputs
from attnbench.gate import md_escape
from attnbench.reports import data as D


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
    from attnbench.reports.site import SiteBuilder

    df = load_inputs(inputs)
    if df.empty:
        return "## attnbench results\n\nNo result rows.\n"
    with tempfile.TemporaryDirectory() as tmp:
        b = SiteBuilder(df, Path(tmp))
        parts = ["## attnbench results", ""]
        parts += [f"> {md_escape(w)}" for w in b.warnings]
        for run in b.run_summary():
            board, _, shapes = b.leaderboard(run["device"])
            parts += [
                f"### {md_escape(run['device'])}",
                "",
                f"{run['runs']} run(s), {run['rows']} rows; case statuses: {md_escape(run['statuses'])}.",
            ]
            if shapes["latency"]:
                parts.append(
                    f"Latency columns at {md_escape(D.shape_label(shapes['latency']))}; "
                    "fast₁ = share of latency cases correct and faster than dense."
                )
            parts += ["", table_markdown(board), ""]
    return "\n".join(parts)
