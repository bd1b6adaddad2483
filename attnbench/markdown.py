"""Markdown helpers shared by the gate's PR comment and the report's Markdown summary."""

from __future__ import annotations


def md_escape(s: str) -> str:
    """Text safe inside a Markdown table cell (HTML and table/emphasis syntax escaped)."""
    return (
        s.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("|", "\\|")
        .replace("`", "\\`")
        .replace("*", "\\*")
        .replace("_", "\\_")
        .replace("\n", " ")
    )
