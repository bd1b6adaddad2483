"""Leaderboard renderer: a static HTML site (`build_site`) and a Markdown summary."""

from __future__ import annotations

from attnbench.reports.markdown import markdown_summary
from attnbench.reports.site import build_site

__all__ = ["build_site", "markdown_summary"]
