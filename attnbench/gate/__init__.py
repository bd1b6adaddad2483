"""CI regression gate: compare HEAD results with BASE, noise-aware.

Rows are matched by case and metric. A metric regresses when it is worse by more than `threshold`
(a factor, in the metric's declared direction) AND the difference is significant: a one-sided
bootstrap on the ratio of medians, resampling runs (replicates) and then each run's samples.
Timings without samples or spread are never called significant; deterministic metrics (memory
bytes, accuracy) without samples are. A case that goes from ok to failed is a regression (exit 1).
A comparison with no case in common fails (exit 4), and so do base cases missing from HEAD (exit 5,
unless `allow_vanished`); new cases are reported. When BASE and HEAD come from different machines or
libraries, timings are compared as ratios to the `baseline` method/backend of the same run.
What a metric means (direction, timed, noise floor) is read from `attnbench.metrics`; a metric
no suite declares is not gated, and the comparison warns about it.

Modules: `load` (inputs, replicates), `stats` (significance), `verdict` (comparison),
`model` (Entry, Comparison), `render` (rich, Markdown, JSON), `ab` (A/B on one machine).
"""

from __future__ import annotations

from attnbench.gate.ab import ab_compare
from attnbench.gate.load import GateInputError
from attnbench.gate.model import (
    EXIT_NOTHING_COMPARED,
    EXIT_OK,
    EXIT_REGRESSION,
    EXIT_VANISHED,
    Comparison,
    Entry,
)
from attnbench.gate.stats import paired, paired_factor, significance
from attnbench.gate.verdict import FAILED, Options, compare
from attnbench.markdown import md_escape

__all__ = [
    "EXIT_NOTHING_COMPARED",
    "EXIT_OK",
    "EXIT_REGRESSION",
    "EXIT_VANISHED",
    "FAILED",
    "Comparison",
    "Entry",
    "GateInputError",
    "Options",
    "ab_compare",
    "compare",
    "md_escape",
    "paired",
    "paired_factor",
    "significance",
]

