"""The gate's result: one `Entry` per compared (case, metric), gathered in a `Comparison`."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Console

from attnbench.gate import render
from attnbench.metrics import DENSE_BASELINE

# Verdicts from most to least urgent; `SHOWN` are the ones listed in the outputs.
ORDER = [
    "regression",
    "failed",
    "vanished",
    "noisy",
    "improvement",
    "fixed",
    "new",
    "still_failing",
    "untested",
    "unchanged",
]
SHOWN = ["regression", "failed", "vanished", "noisy", "improvement", "fixed", "new", "still_failing"]

# Exit codes of `attnbench compare` (2, unusable input, is the CLI's own; 3 is `run`'s failed cases).
EXIT_OK = 0
EXIT_REGRESSION = 1  # a gated metric regressed significantly, or a case went from ok to failed
EXIT_NOTHING_COMPARED = 4  # no case in common (or nothing in common that the gate judges)
EXIT_VANISHED = 5  # base cases missing from HEAD (unless `allow_vanished`)


@dataclass(frozen=True)
class Entry:
    """One compared (case, metric); `factor` > 1 means HEAD is worse by that factor."""

    verdict: str  # regression|failed|improvement|fixed|unchanged|noisy|untested|still_failing|vanished|new
    suite: str
    method: str
    backend: str
    workload: str
    metric: str
    base: float | None = None
    head: float | None = None
    factor: float | None = None
    p_value: float | None = None
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.suite}: {self.method}/{self.backend} {self.workload}"


@dataclass
class Comparison:
    """Result of a comparison; see `exit_code` for what passes.

    `allow_vanished`: base cases missing from HEAD do not fail the comparison (they are still listed).
    """

    entries: list[Entry]
    warnings: list[str] = field(default_factory=list)
    threshold: float = 1.10
    alpha: float = 0.05
    normalised: bool = False
    baseline: str = DENSE_BASELINE
    base_label: str = "base"
    head_label: str = "head"
    allow_vanished: bool = False

    @property
    def vanished(self) -> int:
        """Base cases missing from HEAD."""
        return sum(e.verdict == "vanished" for e in self.entries)

    @property
    def nothing_compared(self) -> bool:
        """No case in common was judged (only vanished and new cases, or nothing at all)."""
        return all(e.verdict in ("vanished", "new") for e in self.entries)

    @property
    def exit_code(self) -> int:
        """`EXIT_REGRESSION` (1) on a regression or failed case, else `EXIT_NOTHING_COMPARED` (4) when
        nothing was compared, else `EXIT_VANISHED` (5) when base cases vanished (unless allowed), else 0."""
        if any(e.verdict in ("regression", "failed") for e in self.entries):
            return EXIT_REGRESSION
        if self.nothing_compared:
            return EXIT_NOTHING_COMPARED
        if self.vanished and not self.allow_vanished:
            return EXIT_VANISHED
        return EXIT_OK

    def status(self) -> str:
        """The verdict in words: REGRESSION, NOTHING COMPARED, VANISHED CASES or OK."""
        return {
            EXIT_REGRESSION: "REGRESSION",
            EXIT_NOTHING_COMPARED: "NOTHING COMPARED",
            EXIT_VANISHED: "VANISHED CASES",
        }.get(self.exit_code, "OK")

    def counts(self) -> dict[str, int]:
        """Entries per verdict, most urgent first, zero counts left out."""
        out = dict.fromkeys(ORDER, 0)
        for e in self.entries:
            out[e.verdict] = out.get(e.verdict, 0) + 1
        return {k: v for k, v in out.items() if v}

    def shown(self) -> list[Entry]:
        """The entries worth listing, most urgent and largest factor first."""
        rank = {v: i for i, v in enumerate(ORDER)}
        return sorted(
            (e for e in self.entries if e.verdict in SHOWN),
            key=lambda e: (rank[e.verdict], -(e.factor or 0), e.label, e.metric),
        )

    def headline(self) -> str:
        counts = ", ".join(f"{v} {k}" for k, v in self.counts().items())
        mode = f"ratios to {self.baseline} (machine mismatch)" if self.normalised else "direct"
        why = []
        if self.nothing_compared:
            why.append("no case in common was compared")
        if self.vanished:
            allowed = "allowed" if self.allow_vanished else "not allowed"
            why.append(f"{self.vanished} base case(s) missing from HEAD ({allowed})")
        return (
            f"{self.status()}: {self.head_label} vs {self.base_label} — {counts or 'nothing compared'}"
            + "".join(f"; {w}" for w in why)
            + f" (threshold ×{self.threshold:g}, alpha {self.alpha:g}, {mode})"
        )

    def render(self, console: Console) -> None:
        """Print the warnings, a table of the shown entries and the headline."""
        render.to_console(self, console)

    def to_markdown(self) -> str:
        """A Markdown summary (e.g. for a PR comment)."""
        return render.to_markdown(self)

    def to_json(self) -> str:
        """The whole comparison, every entry included, as indented JSON."""
        return render.to_json(self)
