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
    """Result of a comparison; `exit_code` is 1 when anything regressed or failed."""

    entries: list[Entry]
    warnings: list[str] = field(default_factory=list)
    threshold: float = 1.10
    alpha: float = 0.05
    normalised: bool = False
    baseline: str = DENSE_BASELINE
    base_label: str = "base"
    head_label: str = "head"

    @property
    def exit_code(self) -> int:
        return 1 if any(e.verdict in ("regression", "failed") for e in self.entries) else 0

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
        status = "REGRESSION" if self.exit_code else "OK"
        counts = ", ".join(f"{v} {k}" for k, v in self.counts().items())
        mode = f"ratios to {self.baseline} (machine mismatch)" if self.normalised else "direct"
        return (
            f"{status}: {self.head_label} vs {self.base_label} — {counts or 'nothing compared'} "
            f"(threshold ×{self.threshold:g}, alpha {self.alpha:g}, {mode})"
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
