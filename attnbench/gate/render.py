"""Rendering a `Comparison`: a rich table for the terminal, Markdown for a PR comment, JSON."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from attnbench.markdown import md_escape

if TYPE_CHECKING:
    from attnbench.gate.model import Comparison

COLUMNS = ("verdict", "case", "metric", "base", "head", "worse ×", "p", "note")
STYLE = {
    "regression": "red",
    "failed": "red",
    "improvement": "green",
    "fixed": "green",
    "noisy": "yellow",
    "vanished": "yellow",
}


def fmt(x: float | None) -> str:
    """A number with 4 significant digits, or an em dash for None/non-finite."""
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "—"
    return f"{x:.4g}"


def to_console(cmp: Comparison, console: Console) -> None:
    """Print the warnings, a table of the shown entries and the coloured headline."""
    for w in cmp.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(w)}", highlight=False)
    rows = cmp.shown()
    if rows:
        table = Table(title=escape(f"attnbench compare: {cmp.head_label} vs {cmp.base_label}"))
        for col in COLUMNS:
            table.add_column(col, overflow="fold")
        for e in rows:
            table.add_row(
                f"[{STYLE.get(e.verdict, 'white')}]{e.verdict}[/]",
                escape(e.label),
                escape(e.metric),
                fmt(e.base),
                fmt(e.head),
                fmt(e.factor),
                fmt(e.p_value),
                escape(e.note),
            )
        console.print(table)
    console.print(("[red]" if cmp.exit_code else "[green]") + escape(cmp.headline()) + "[/]", highlight=False)


def to_markdown(cmp: Comparison) -> str:
    """Headline, warnings as quotes and a table of the shown entries, every cell escaped."""
    icon = "❌" if cmp.exit_code else "✅"
    lines = [f"### {icon} attnbench compare", "", md_escape(cmp.headline()), ""]
    lines += [f"> ⚠️ {md_escape(w)}" for w in cmp.warnings]
    rows = cmp.shown()
    if rows:
        lines += [
            "",
            "| " + " | ".join(COLUMNS) + " |",
            "|---|---|---|---:|---:|---:|---:|---|",
        ]
        lines += [
            f"| {e.verdict} | {md_escape(e.label)} | {md_escape(e.metric)} | {fmt(e.base)} | {fmt(e.head)} | "
            f"{fmt(e.factor)} | {fmt(e.p_value)} | {md_escape(e.note)} |"
            for e in rows
        ]
    return "\n".join(lines) + "\n"


def to_json(cmp: Comparison) -> str:
    """Options, counts, warnings and every entry as indented JSON."""
    return json.dumps(
        {
            "exit_code": cmp.exit_code,
            "status": cmp.status(),
            "headline": cmp.headline(),
            "allow_vanished": cmp.allow_vanished,
            "counts": cmp.counts(),
            "threshold": cmp.threshold,
            "alpha": cmp.alpha,
            "normalised": cmp.normalised,
            "baseline": cmp.baseline,
            "base": cmp.base_label,
            "head": cmp.head_label,
            "warnings": cmp.warnings,
            "entries": [asdict(e) for e in cmp.entries],
        },
        indent=2,
        default=_json_default,
    )


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    return str(x)
