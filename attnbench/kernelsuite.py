"""Shared case generation for the kernel suites (latency, memory, flops, correctness, scaling).

A preset section (`[shapes]` and `[timing]`, overridden by `[suite.<name>]`) is validated into
`KernelSettings`: the grid (batch, heads, kv_heads, head_dim, seq_lens, dtypes, causal, modes),
`params.<method>` overrides, the selection and the timing budget; an unknown key or a bad value
is refused before anything runs. Every selected method × backend × workload becomes a Case;
cells that can't run become unsupported/skipped rows at run time, never silent gaps.
With `natural_mask` (default true), a method that has only one form (causal-only like MoBA,
non-causal-only like Agent) is measured in that form instead of being skipped; its rows and its
dense baseline say which form ran.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any

from attnbench.metrics import MetricSpec
from attnbench.presets import Preset
from attnbench.registry import MethodEntry, Registry
from attnbench.settings import Positive, Seconds, resolve, settings
from attnbench.spec import Backend, Workload, params_json
from attnbench.suite import Case

TIMING_KEYS = ("min_time_s", "max_reps", "warmup_s", "cuda_graphs")


@settings
class KernelSettings:
    """The keys a kernel suite's preset section may set (a scalar or a list for grid keys)."""

    batch: Positive | list[Positive] = 1
    heads: Positive | list[Positive] = 4
    kv_heads: Positive | None = None
    head_dim: Positive | list[Positive] = 64
    seq_lens: Positive | list[Positive] = dataclasses.field(default_factory=lambda: [256])
    dtypes: str | list[str] = dataclasses.field(default_factory=lambda: ["float32"])
    causal: bool | list[bool] = dataclasses.field(default_factory=lambda: [False])
    modes: str | list[str] = dataclasses.field(default_factory=lambda: ["fwd"])
    params: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    methods: list[str] | None = None
    backends: list[str] | None = None
    exclude: list[str] = dataclasses.field(default_factory=list)
    natural_mask: bool = True
    seed: int = 0
    min_time_s: Seconds = 0.1
    max_reps: Positive = 100
    warmup_s: Seconds = 0.02
    cuda_graphs: bool = False


def as_list(x: Any) -> list[Any]:
    return list(x) if isinstance(x, list | tuple) else [x]


def workloads(s: KernelSettings, device: str) -> list[Workload]:
    """The workload grid of validated settings (ValueError on impossible sizes)."""
    out = []
    grid = itertools.product(as_list(s.batch), as_list(s.heads), as_list(s.head_dim), as_list(s.seq_lens),
                             as_list(s.dtypes), as_list(s.causal), as_list(s.modes))
    for batch, heads, head_dim, n, dtype, causal, mode in grid:
        kv = s.kv_heads or heads
        out.append(Workload(batch=batch, heads_q=heads, heads_kv=kv, seq_q=n, seq_kv=n, head_dim=head_dim,
                            dtype=dtype, causal=bool(causal), mode=mode, device=device))
    return out


def method_params(s: KernelSettings, entry: MethodEntry) -> dict[str, Any]:
    """Preset/CLI overrides for one method (validated against its defaults)."""
    overrides = s.params.get(entry.name, {})
    entry.spec.params(overrides)  # unknown keys raise here, before anything runs
    return dict(overrides)


def natural_form(entry: MethodEntry, w: Workload) -> Workload:
    """`w` with its causal flag flipped when the method only has the other form."""
    caps = entry.spec.capabilities
    if w.causal and not caps.causal and caps.noncausal:
        return w.replace(causal=False)
    if not w.causal and not caps.noncausal and caps.causal:
        return w.replace(causal=True)
    return w


class KernelSuite:
    """Base for suites whose cases are method × backend × workload."""

    name = ""
    version = 1
    kind = "kernel"
    metrics: tuple[MetricSpec, ...] = ()
    include_reference = True

    def applies_to(self, entry: MethodEntry, backend: Backend) -> str | None:
        if backend == Backend.REFERENCE and not self.include_reference:
            return f"{self.name} compares fused backends with the reference"
        return None

    def settings(self, preset: Preset) -> KernelSettings:
        """The preset's validated settings for this suite (SettingsError on unknown keys/values)."""
        return resolve(KernelSettings, preset.section(self.name), where=f"suite.{self.name}")

    def options(self, s: KernelSettings, section: dict[str, Any]) -> dict[str, Any]:
        """Suite settings that are part of a case's identity (`section`: the keys the preset set)."""
        return {}

    def cases(self, preset: Preset, methods: Registry[MethodEntry]) -> list[Case]:
        s, section, device = self.settings(preset), preset.section(self.name), preset.device
        options = json.dumps(self.options(s, section), sort_keys=True)
        out: dict[str, Case] = {}
        natural = s.natural_mask
        for entry in methods:
            params = method_params(s, entry)
            for backend in entry.backends:
                if not preset.selects(entry.name, backend.value, self.name):
                    continue
                for w in self.case_workloads(s, device):
                    if natural:
                        w = natural_form(entry, w)
                    case = Case(self.name, entry.name, backend.value, w, params_json(params),
                                seed=s.seed, preset=preset.name,
                                suite_version=self.version, options=options)
                    out.setdefault(case.case_id, case)
        return list(out.values())

    def case_workloads(self, s: KernelSettings, device: str) -> list[Workload]:
        return workloads(s, device)


def timing_options(s: KernelSettings, section: dict[str, Any], keys: tuple[str, ...] = TIMING_KEYS
                   ) -> dict[str, Any]:
    """The timing budget the preset set explicitly (part of the case identity, as set)."""
    return {k: getattr(s, k) for k in keys if k in section}
