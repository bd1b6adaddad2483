"""The suite contract: a suite turns a preset into Cases and a Case into Rows."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from attnbench.spec import AttentionSpec, Backend, Params, Status, Workload

if TYPE_CHECKING:
    from attnbench.metrics import MetricSpec
    from attnbench.presets import Preset
    from attnbench.registry import Impl, MethodEntry, Registry


@dataclass(frozen=True, slots=True)
class Case:
    """One measurable cell: a suite on one method/backend/workload/params. Hashable and stable."""

    suite: str
    method: str
    backend: Backend
    workload: Workload
    params: str = "{}"  # canonical JSON (spec.params_json)
    seed: int = 0
    preset: str = ""
    suite_version: int = 1
    options: str = "{}"  # suite-specific settings (JSON), part of the identity

    def __post_init__(self) -> None:
        if not isinstance(self.backend, Backend):
            object.__setattr__(self, "backend", Backend.parse(self.backend))

    @property
    def case_id(self) -> str:
        key = json.dumps([self.suite, self.suite_version, self.method, self.backend,
                          self.workload.to_dict(), self.params, self.seed, self.options],
                         sort_keys=True)
        return hashlib.sha1(key.encode()).hexdigest()[:16]

    @property
    def param_dict(self) -> dict[str, Any]:
        return json.loads(self.params)

    @property
    def option_dict(self) -> dict[str, Any]:
        return json.loads(self.options)

    @property
    def label(self) -> str:
        return f"{self.suite}:{self.method}/{self.backend} {self.workload.id}"

    def to_json(self) -> str:
        d = {k: getattr(self, k) for k in ("suite", "method", "backend", "params", "seed", "preset",
                                           "suite_version", "options")}
        d["workload"] = self.workload.to_dict()
        return json.dumps(d)

    @classmethod
    def from_json(cls, s: str) -> Case:
        d = json.loads(s)
        d["workload"] = Workload.from_dict(d["workload"])
        return cls(**d)


@dataclass(frozen=True, slots=True)
class ResolvedCase:
    """A Case resolved once, by the runner: method entry, backend implementation, validated
    params (defaults merged with the case's overrides) and the workload as the method runs it.
    Suites and `execute.prepare_call` take this; nothing downstream looks a name up again."""

    case: Case
    entry: MethodEntry
    impl: Impl
    params: Params
    workload: Workload

    @classmethod
    def resolve(cls, case: Case, methods: Registry[MethodEntry]) -> ResolvedCase:
        """Look the case's method and backend up and validate its params (ValueError/KeyError if not)."""
        entry = methods.get(case.method)
        impl = entry.impl(case.backend)
        params = entry.spec.params(case.param_dict)
        return cls(case, entry, impl, params, entry.spec.shape(case.workload, params))

    @property
    def spec(self) -> AttentionSpec:
        return self.entry.spec

    @property
    def method(self) -> str:
        return self.case.method

    @property
    def backend(self) -> Backend:
        return self.case.backend

    @property
    def seed(self) -> int:
        return self.case.seed

    @property
    def options(self) -> dict[str, Any]:
        return self.case.option_dict

    def why_not(self) -> str | None:
        """Why this method/backend cannot run the workload with these params, or None."""
        return self.entry.why_not(self.case.backend, self.workload, self.params)


@dataclass(frozen=True, slots=True)
class Row:
    """One measured metric of a case. The runner adds the run/device/case columns."""

    metric: str
    value: float | None
    unit: str = ""
    stat: str = "value"  # median | mean | max | value | fit
    n: int = 1
    p20: float | None = None
    p80: float | None = None
    samples: Sequence[float] | None = None
    status: Status = Status.OK
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # overrides of case columns, e.g. seq_len


def status_row(status: Status, error: str) -> Row:
    """The single row written for a case that did not produce measurements."""
    return Row(metric="status", value=None, status=status, error=error)


@runtime_checkable
class Suite(Protocol):
    """What the runner needs of a suite; suites never name methods."""

    name: str
    version: int
    kind: str  # "kernel" (speed, memory, FLOPs, numerics of one call) | "proxy" (trains and scores a model)
    metrics: tuple[MetricSpec, ...]  # every metric run() emits (attnbench.metrics)

    def cases(self, preset: Preset, methods: Registry[MethodEntry]) -> list[Case]:
        """All cells of this suite for the preset, including ones that will be skipped."""
        ...

    def applies_to(self, entry: MethodEntry, backend: Backend) -> str | None:
        """Why this suite does not apply to the method/backend, or None."""
        ...

    def run(self, rc: ResolvedCase) -> list[Row]:
        """Measure one resolved case; raise on failure (the runner records the status)."""
        ...
