"""Matplotlib SVG plots for the site: one file per plot under `plots/`, shown with <img>.

Labels come from result files (other machines, any method name), so mathtext is escaped and
text is written as SVG text nodes, which matplotlib XML-escapes; <img> never runs SVG scripts.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

_STYLE = {
    "svg.fonttype": "none",
    "svg.hashsalt": "attnbench",
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "figure.dpi": 100,
}


# Series styles: ten colours while they suffice, then twenty, each series also cycling markers (and,
# past twenty, line styles), so no two of the first 40 series share a (colour, marker) pair.
_TAB10 = [matplotlib.colormaps["tab10"](i) for i in range(10)]
_TAB20 = [matplotlib.colormaps["tab20"](i) for i in range(20)]
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_LINES = ("-", "--", ":", "-.")
_HATCHES = ("", "//", "..", "xx")


def series_style(i: int, n: int) -> tuple[tuple[float, ...], str, str]:
    """(colour, marker, line style) of series `i` of `n`."""
    palette = _TAB10 if n <= 10 else _TAB20
    return tuple(palette[i % len(palette)]), _MARKERS[i % len(_MARKERS)], _LINES[(i // len(palette)) % len(_LINES)]


@dataclass(frozen=True)
class Plot:
    src: str  # path relative to the site root
    title: str


# Characters XML 1.0 forbids (or normalises away) in SVG text: control characters, line breaks
# (a label is one line), surrogates and the two non-characters; each becomes a space.
_NOT_XML_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def safe(label: str) -> str:
    """A label matplotlib prints verbatim into valid SVG: `$` would start mathtext, a leading `_` hides
    legend entries, and control characters would make the SVG invalid XML."""
    s = _NOT_XML_TEXT.sub(" ", str(label)).replace("\\", "\\\\").replace("$", r"\$")
    return "\u200b" + s if s.startswith("_") else s


def _memo(draw: Callable[..., Plot | None]) -> Callable[..., Plot | None]:
    """Draw each distinct plot once per site (pages share plots); `caption` only labels the <img>."""

    @functools.wraps(draw)
    def wrapper(self: PlotWriter, *args: object, caption: str = "", **kwargs: object) -> Plot | None:
        key = repr((draw.__name__, args, sorted(kwargs.items())))
        if key not in self.cache:
            self.cache[key] = draw(self, *args, **kwargs)
        plot = self.cache[key]
        return Plot(plot.src, caption or plot.title) if plot else None

    return wrapper


class PlotWriter:
    """Writes SVG plots into `<site>/plots/` with content-derived file names."""

    def __init__(self, site: Path) -> None:
        self.site = site
        self.dir = site / "plots"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cache: dict[str, Plot | None] = {}

    def _save(self, fig: plt.Figure, title: str) -> Plot:
        buf = io.BytesIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})  # no bbox="tight": it draws twice
        plt.close(fig)
        data = buf.getvalue()
        name = hashlib.sha1(data).hexdigest()[:16] + ".svg"
        (self.dir / name).write_bytes(data)
        return Plot(f"plots/{name}", title)

    @_memo
    def lines(
        self,
        series: dict[str, list[tuple[float, float]]],
        *,
        title: str,
        xlabel: str,
        ylabel: str,
        logx: bool = True,
        logy: bool = True,
        xticks: tuple[tuple[float, str], ...] = (),
    ) -> Plot | None:
        """One line per series (x, y points), log-log by default; `xticks`: (x, label) to name the x values."""
        series = {k: v for k, v in series.items() if v}
        if not series:
            return None
        with plt.rc_context(_STYLE):
            fig, ax = plt.subplots(figsize=(6.4, 3.8))
            fig.subplots_adjust(left=0.12, right=0.97, bottom=0.2 if xticks else 0.13, top=0.92)
            for i, (label, pts) in enumerate(sorted(series.items())):
                xs, ys = zip(*pts, strict=True)
                color, marker, ls = series_style(i, len(series))
                ax.plot(xs, ys, marker=marker, ls=ls, color=color, ms=3.5, label=safe(label))
            if logx and all(x > 0 for v in series.values() for x, _ in v):
                ax.set_xscale("log", base=2)
            if logy and all(y > 0 for v in series.values() for _, y in v):
                ax.set_yscale("log")
            if xticks:
                ax.set_xticks([x for x, _ in xticks], [safe(t) for _, t in xticks], rotation=30, ha="right")
            ax.set(xlabel=safe(xlabel), ylabel=safe(ylabel), title=safe(title))
            ax.legend(fontsize=7, ncol=1 + len(series) // 12, loc="best" if xticks else "upper left")
            return self._save(fig, title)

    @_memo
    def pareto(
        self, points: Sequence[tuple[str, float, float]], *, title: str, xlabel: str, ylabel: str
    ) -> Plot | None:
        """Scatter of (label, cost, score) with the front of points no other beats on both."""
        pts = [(lab, x, y) for lab, x, y in points if math.isfinite(x) and math.isfinite(y) and x > 0]
        if len(pts) < 2:
            return None
        front, best = [], -math.inf
        for _, x, y in sorted(pts, key=lambda t: (t[1], -t[2])):
            if y > best:
                front.append((x, y))
                best = y
        with plt.rc_context(_STYLE):
            fig, ax = plt.subplots(figsize=(6.4, 4.2))
            fig.subplots_adjust(left=0.12, right=0.97, bottom=0.12, top=0.93)
            ax.step(*zip(*front, strict=True), where="post", color="0.6", lw=1, label="Pareto front")
            for i, (lab, x, y) in enumerate(pts):  # direct labels, and distinct (colour, marker) pairs
                color, marker, _ = series_style(i, len(pts))
                ax.scatter([x], [y], s=18, color=color, marker=marker)
                ax.annotate(safe(lab), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
            ax.set_xscale("log")
            ax.set(xlabel=safe(xlabel), ylabel=safe(ylabel), title=safe(title))
            ax.legend(fontsize=7, loc="lower right")
            return self._save(fig, title)

    @_memo
    def heatmap(
        self,
        values: list[list[float]],
        *,
        xlabels: Sequence[str],
        ylabels: Sequence[str],
        title: str,
        xlabel: str,
        ylabel: str,
        vmin: float = 0.0,
        vmax: float = 1.0,
    ) -> Plot | None:
        """A value grid (rows = ylabels), annotated; NaN cells left blank."""
        if not values or not values[0]:
            return None
        with plt.rc_context({**_STYLE, "axes.grid": False}):
            fig, ax = plt.subplots(figsize=(2.2 + 0.6 * len(xlabels), 1.6 + 0.4 * len(ylabels)))
            fig.subplots_adjust(left=0.2, right=0.86, bottom=0.3, top=0.85)
            im = ax.imshow(values, vmin=vmin, vmax=vmax, cmap="RdYlGn", aspect="auto")
            ax.set_xticks(range(len(xlabels)), [safe(x) for x in xlabels], rotation=45, ha="right")
            ax.set_yticks(range(len(ylabels)), [safe(y) for y in ylabels])
            for i, row in enumerate(values):
                for j, v in enumerate(row):
                    if not math.isnan(v):
                        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
            fig.colorbar(im, ax=ax, fraction=0.05)
            ax.set(xlabel=safe(xlabel), ylabel=safe(ylabel), title=safe(title))
            return self._save(fig, title)

    @_memo
    def bars(self, groups: dict[str, dict[str, float]], *, title: str, ylabel: str) -> Plot | None:
        """Grouped bars: group (x tick) → series (bar within the group) → value."""
        groups = {g: v for g, v in groups.items() if v}
        if not groups:
            return None
        names = sorted({s for v in groups.values() for s in v})
        width = 0.8 / max(len(names), 1)
        with plt.rc_context(_STYLE):
            fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(groups) * max(1, len(names)) + 2), 4.4))
            fig.subplots_adjust(left=0.1, right=0.98, bottom=0.3, top=0.92)
            for i, name in enumerate(names):
                xs = [k + i * width for k, g in enumerate(groups) if name in groups[g]]
                ys = [groups[g][name] for g in groups if name in groups[g]]
                color = series_style(i, len(names))[0]
                hatch = _HATCHES[(i // 20) % len(_HATCHES)] or None
                ax.bar(xs, ys, width, label=safe(name), color=color, hatch=hatch, edgecolor="white", linewidth=0.3)
            ax.set_xticks(
                [k + 0.4 - width / 2 for k in range(len(groups))],
                [safe(g) for g in groups],
                rotation=30,
                ha="right",
            )
            ax.set(ylabel=safe(ylabel), title=safe(title))
            ax.legend(fontsize=7)
            return self._save(fig, title)
