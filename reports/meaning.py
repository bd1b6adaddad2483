"""What the report knows about suites and metrics, read from their declarations (never from names).

Every suite declares its kind ("kernel" | "proxy") and the metrics it emits (`attnbench.metrics`);
the leaderboard's choices are derived from those declarations:

- columns: the kernel suites' headline metrics, each at that suite's headline shape (each metric
  once; what the aggregates rest on first, then ranked metrics, then informational ones), and the
  proxy suites' headline metrics as means;
- aggregates: the kernel suite declaring both a `role="time"` and a `role="speedup"` metric gives
  fast_p (its speedup) and win rates (its time);
- correctness: every suite declaring a `role="error"` metric gets a status cell per method/backend.

A suite not installed here (another machine's plugin, pytest-benchmark rows) has no declaration:
it gets generic tables, and the leaderboard shows its shortest ranked, untimed score.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from attnbench.metrics import HIGHER, LOWER, MetricSpec, MetricTable, suite_table

ROLES = ("time", "speedup", "error")


def _rank(spec: MetricSpec) -> int:
    """Leaderboard precedence: what the aggregates rest on, then ranked metrics, then informational."""
    return 0 if spec.role else 1 if spec.gated else 2


@dataclass(frozen=True)
class Catalog:
    """The merged metric table plus the kind of every registered suite."""

    table: MetricTable
    kinds: dict[str, str]

    # -- metrics --------------------------------------------------------------------------
    def spec(self, metric: str) -> MetricSpec | None:
        return self.table.get(metric)

    def label(self, metric: str) -> str:
        return self.table.label(metric)

    def unit(self, metric: str) -> str:
        spec = self.table.get(metric)
        return spec.unit if spec else ""

    def higher_is_better(self, metric: str) -> bool:
        return self.table.direction(metric) == HIGHER

    def order(self, metrics: Iterable[str], suite: str | None = None) -> list[str]:
        """Display order: `suite`'s declarations first, then the table's order; never `status`."""
        ms = sorted(set(metrics) - {"status"})
        own = self.table.suite_metrics(suite) if suite else []
        rank = {m: next((i for i, s in enumerate(own) if s.matches(m)), len(own)) for m in ms}
        rest = {m: i for i, m in enumerate(self.table.order(ms))}
        return sorted(ms, key=lambda m: (rank[m], rest[m]))

    # -- suites ---------------------------------------------------------------------------
    def kind(self, suite: str) -> str | None:
        return self.kinds.get(suite)

    def is_kernel(self, suite: str) -> bool:
        return self.kinds.get(suite) == "kernel"

    def role_metric(self, suite: str | None, role: str) -> str | None:
        """The first metric `suite` declares with `role` (None when it has none)."""
        if suite is None:
            return None
        return next((s.name for s in self.table.suite_metrics(suite) if s.role == role), None)

    @functools.cached_property
    def timing_suite(self) -> str | None:
        """The kernel suite fast_p and win rates are taken over: it declares a time and a speedup metric."""
        for suite in sorted(self.kinds):
            if self.is_kernel(suite) and self.role_metric(suite, "time") and self.role_metric(suite, "speedup"):
                return suite
        return None

    @property
    def time_metric(self) -> str | None:
        return self.role_metric(self.timing_suite, "time")

    @property
    def speedup_metric(self) -> str | None:
        return self.role_metric(self.timing_suite, "speedup")

    def timing_metric(self, unit: str) -> str | None:
        """The timing suite's headline metric of `unit` (e.g. the rate, or its share of the peak)."""
        if self.timing_suite is None:
            return None
        return next((s.name for s in self.table.headline(self.timing_suite) if s.unit == unit), None)

    @functools.cached_property
    def error_suites(self) -> list[str]:
        """Suites whose `role="error"` metric says whether a method/backend computes the right thing."""
        return [s for s in sorted(self.kinds) if self.role_metric(s, "error")]

    @functools.cached_property
    def board_columns(self) -> list[tuple[str, MetricSpec]]:
        """(suite, spec) of the kernel headline columns, in display order, each metric once."""
        kernel = [s for s in sorted(self.kinds) if self.is_kernel(s)]
        # the timing suite first: a metric it shares with another suite (latency) is read from it
        kernel.sort(
            key=lambda s: (s != self.timing_suite, min((_rank(h) for h in self.table.headline(s)), default=3))
        )
        out: list[tuple[str, MetricSpec]] = []
        seen: set[str] = set()
        for suite in kernel:
            for spec in sorted(self.table.headline(suite), key=_rank):
                if spec.name not in seen and not spec.is_pattern:
                    seen.add(spec.name)
                    out.append((suite, spec))
        return out

    def costs(self, suite: str) -> list[str]:
        """A kernel suite's headline costs (lower is better; they grow polynomially: log axes)."""
        if not self.is_kernel(suite):
            return []
        return [s.name for s in self.table.headline(suite) if s.direction == LOWER]

    def dense_ratios(self) -> list[tuple[str, MetricSpec]]:
        """Kernel headline costs read as a ratio to the dense baseline (untimed, no role: e.g. memory)."""
        return [
            (s, spec) for s, spec in self.board_columns if spec.direction == LOWER and not spec.timed and not spec.role
        ]

    # -- proxies --------------------------------------------------------------------------
    def proxy_columns(self, df: pd.DataFrame) -> list[tuple[str, str]]:
        """(suite, metric) of the non-kernel suites shown on the leaderboard (means per method).

        A suite's headline metrics; an undeclared suite's shortest ranked, untimed score (higher is
        better first), bytes and curves aside.
        """
        out = []
        prox = df[~df["suite"].map(self.is_kernel).astype(bool) & (df["status"] == "ok")]
        for suite, g in prox.groupby("suite"):
            present = set(g["metric"])
            chosen = [s.name for s in self.table.headline(str(suite)) if s.name in present]
            if not chosen:
                scored = []
                for m in sorted(present):
                    spec = self.table.get(m)
                    if spec is None or not spec.gated or spec.timed:
                        continue
                    if spec.unit in ("B", "bytes") or m.endswith("_bytes") or "_curve_" in m:
                        continue
                    scored.append(m)
                chosen = sorted(scored, key=lambda m: (self.table.direction(m) != HIGHER, len(m), m))[:1]
            out += [(str(suite), m) for m in chosen]
        return out

    def proxy_label(self, suite: str, metric: str) -> str:
        """A declared label as is; otherwise the metric's name prefixed by its suite."""
        spec = self.table.get(metric)
        if spec is not None and spec.label and not spec.is_pattern:
            return spec.label
        return f"{suite} {self.label(metric)}"


@functools.cache
def catalog() -> Catalog:
    """The catalog of every registered suite (loads the plugins; a broken plugin leaves the rest)."""
    from attnbench.registry import SUITES, load_plugins

    try:
        load_plugins()
    except Exception:  # the site reports the broken plugin; render what is registered
        pass
    suites = list(SUITES)
    return Catalog(suite_table(suites), {str(s.name): str(getattr(s, "kind", "")) for s in suites})
