"""Markdown helpers shared by the gate's PR comment and the report's Markdown summary."""

from __future__ import annotations

import re

# Line breaks of any kind (a bare \r ends a line too) and other control characters: each would end
# a table row or corrupt the text, so each becomes a space.
_CONTROL = re.compile("\r\n|[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def md_escape(s: str) -> str:
    """Text safe inside a Markdown table cell: one line; HTML, table, emphasis, link/image syntax
    and @mentions escaped (GitHub-flavoured Markdown)."""
    return _CONTROL.sub(
        " ",
        s.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("\\", "\\\\")
        .replace("|", "\\|")
        .replace("`", "\\`")
        .replace("*", "\\*")
        .replace("_", "\\_")
        .replace("[", "\\[")
        .replace("]", "\\]")
        .replace("!", "\\!")
        .replace("@", "@\u200b"),
    )
