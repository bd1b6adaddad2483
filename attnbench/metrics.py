"""What every metric means, declared once: unit, direction, timed or not, noise floor, label, headline.

Suites declare the metrics they emit (`Suite.metrics`, a tuple of `MetricSpec`); the few that the
shared machinery emits (the status row, the proxy trainer's bookkeeping, pytest-benchmark rows) are
declared here in `CORE`. The gate and the report read the merged `MetricTable`; neither guesses a
meaning from a metric's name. A name may be an `fnmatch` pattern (`mqar_acc_k*`) for families of
metrics; exact names win over patterns, and longer patterns over shorter ones.
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

DENSE_BASELINE = "mha/sdpa"  # method/backend every speedup and cross-machine ratio is taken against


class Direction(enum.StrEnum):
    LOWER = "lower"
    HIGHER = "higher"


LOWER, HIGHER = Direction.LOWER, Direction.HIGHER
MIB = float(1 << 20)  # peak memory differences below one page-granular MiB are never regressions
POINT = 0.01  # accuracy-like differences below one point are never regressions


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """The meaning of one metric (or of a family of metrics, when `name` has `*`/`?`).

    Args:
        name: exact metric name, or an fnmatch pattern.
        unit: the unit rows carry.
        direction: which way is better; None = informational, never gated.
        timed: derived from wall-clock time: significant only given samples or spread.
        floor: absolute differences below this are never regressions.
        label: short column label (default: the name with spaces).
        headline: shown as a column of the leaderboard overview (in declaration order).
        role: what the leaderboard's aggregates use it for: "time" (the per-call time that
            rankings and win rates compare), "speedup" (ratio to DENSE_BASELINE, counted by fast_p),
            "error" (numerical error against the reference); "" for none.
        same_run_ratio: already a ratio to DENSE_BASELINE timed in the same run, so the gate never
            re-normalises it when the two sides come from different machines.
    """

    name: str
    unit: str = ""
    direction: Direction | None = None
    timed: bool = False
    floor: float = 0.0
    label: str = ""
    headline: bool = False
    role: str = ""
    same_run_ratio: bool = False

    @property
    def is_pattern(self) -> bool:
        return any(ch in self.name for ch in "*?[")

    @property
    def gated(self) -> bool:
        return self.direction is not None

    def matches(self, metric: str) -> bool:
        return fnmatch.fnmatchcase(metric, self.name) if self.is_pattern else metric == self.name

    def title(self, metric: str | None = None) -> str:
        """Display label of `metric` (this spec's label, or the metric name with spaces)."""
        if self.label and not self.is_pattern:
            return self.label
        return (metric or self.name).replace("_", " ")


def higher(name: str, unit: str = "fraction", **kw: object) -> MetricSpec:
    """An accuracy-like metric: higher is better, one point of noise floor."""
    return MetricSpec(name, unit, HIGHER, floor=POINT, **kw)  # type: ignore[arg-type]


def lower(name: str, unit: str = "", **kw: object) -> MetricSpec:
    """An error-like metric: lower is better."""
    return MetricSpec(name, unit, LOWER, **kw)  # type: ignore[arg-type]


def info(name: str, unit: str = "", **kw: object) -> MetricSpec:
    """A diagnostic or bookkeeping metric: shown, never gated."""
    return MetricSpec(name, unit, None, **kw)  # type: ignore[arg-type]


# Emitted by shared machinery rather than one suite, or generic names any importer may use.
CORE: tuple[MetricSpec, ...] = (
    info("status", label="status"),
    # the proxy trainer's bookkeeping (attnbench.proxy): training outcomes are gated by their scores
    info("steps", "steps"),
    info("steps_to_target", "steps"),
    info("wall_s", "s"),
    info("truncated", "bool"),
    info("train_loss", "nats"),
    # generic scores (external importers, hand-made rows)
    higher("accuracy", "", label="accuracy"),
    lower("mse", "mse", label="MSE"),
)


class MetricTable:
    """Name → MetricSpec over CORE and every suite's declarations.

    The same name declared twice must mean the same thing (two kernel suites may both emit
    `latency_ms`); a conflicting declaration raises.
    """

    def __init__(self, specs: Iterable[MetricSpec] = ()) -> None:
        self._exact: dict[str, MetricSpec] = {}
        self._patterns: list[MetricSpec] = []
        self._by_suite: dict[str, list[MetricSpec]] = {}
        for spec in (*CORE, *specs):
            self.add(spec)

    def add(self, spec: MetricSpec, suite: str | None = None) -> None:
        if suite is not None:
            self._by_suite.setdefault(suite, []).append(spec)
        if spec.is_pattern:
            known = next((p for p in self._patterns if p.name == spec.name), None)
            if known is None:
                self._patterns.append(spec)
                self._patterns.sort(key=lambda p: -len(p.name))
            elif known != spec:
                raise ValueError(f"metric pattern {spec.name!r} declared twice with different meanings")
            return
        known = self._exact.get(spec.name)
        if known is not None and known != spec:
            raise ValueError(f"metric {spec.name!r} declared twice with different meanings: {known} vs {spec}")
        self._exact[spec.name] = spec

    def get(self, metric: str) -> MetricSpec | None:
        """The spec of `metric`, or None when nothing declares it."""
        if metric in self._exact:
            return self._exact[metric]
        return next((p for p in self._patterns if p.matches(metric)), None)

    def suite_metrics(self, suite: str) -> list[MetricSpec]:
        """The specs `suite` declared, in declaration order (empty for unknown suites)."""
        return list(self._by_suite.get(suite, ()))

    def headline(self, suite: str) -> list[MetricSpec]:
        return [s for s in self.suite_metrics(suite) if s.headline]

    def order(self, metrics: Iterable[str]) -> list[str]:
        """`metrics` in declaration order (suites by name, then CORE); undeclared ones last, sorted."""
        declared = [s for suite in sorted(self._by_suite) for s in self._by_suite[suite]] + list(CORE)
        rank: dict[str, int] = {}
        ms = sorted(set(metrics))
        for m in ms:
            rank[m] = next((i for i, s in enumerate(declared) if s.matches(m)), len(declared))
        return sorted(ms, key=lambda m: (rank[m], m))

    def direction(self, metric: str) -> Direction | None:
        spec = self.get(metric)
        return spec.direction if spec else None

    def label(self, metric: str) -> str:
        spec = self.get(metric)
        return spec.title(metric) if spec else metric.replace("_", " ")


def suite_table(suites: Iterable[object]) -> MetricTable:
    """A MetricTable of CORE plus the `metrics` each suite object declares."""
    table = MetricTable()
    for suite in suites:
        for spec in getattr(suite, "metrics", ()):
            table.add(spec, suite=str(getattr(suite, "name", "")))
    return table


def metric_table() -> MetricTable:
    """The table of every registered suite (loads the plugins)."""
    from attnbench.registry import SUITES, load_plugins

    load_plugins()
    return suite_table(SUITES)
