"""Shared case generation for the kernel suites (latency, memory, flops, correctness, scaling).

A preset section gives the grid: batch, heads, kv_heads, head_dim, seq_lens, dtypes, causal,
modes, and `params.<method>` overrides. Every selected method × backend × workload becomes a
Case; cells that can't run become unsupported/skipped rows at run time, never silent gaps.
With `natural_mask` (default true), a method that has only one form (causal-only like MoBA,
non-causal-only like Agent) is measured in that form instead of being skipped; its rows and its
dense baseline say which form ran.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from attnbench.metrics import MetricSpec
from attnbench.presets import Preset
from attnbench.registry import MethodEntry, Registry
from attnbench.spec import Backend, Workload, params_json
from attnbench.suite import Case


def as_list(x: Any) -> list[Any]:
    return list(x) if isinstance(x, list | tuple) else [x]


def workloads(section: dict[str, Any], device: str) -> list[Workload]:
    """The workload grid of a preset section (ValueError on impossible sizes)."""
    out = []
    grid = itertools.product(as_list(section.get("batch", 1)), as_list(section.get("heads", 4)),
                             as_list(section.get("head_dim", 64)), as_list(section.get("seq_lens", [256])),
                             as_list(section.get("dtypes", ["float32"])),
                             as_list(section.get("causal", [False])), as_list(section.get("modes", ["fwd"])))
    for batch, heads, head_dim, n, dtype, causal, mode in grid:
        kv = section.get("kv_heads", heads)
        out.append(Workload(batch=batch, heads_q=heads, heads_kv=kv, seq_q=n, seq_kv=n, head_dim=head_dim,
                            dtype=dtype, causal=bool(causal), mode=mode, device=device))
    return out


def method_params(section: dict[str, Any], entry: MethodEntry) -> dict[str, Any]:
    """Preset/CLI overrides for one method (validated against its defaults)."""
    overrides = section.get("params", {}).get(entry.name, {})
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

    def options(self, section: dict[str, Any]) -> dict[str, Any]:
        """Suite settings that are part of a case's identity."""
        return {}

    def cases(self, preset: Preset, methods: Registry[MethodEntry]) -> list[Case]:
        section, device = preset.section(self.name), preset.device
        options = json.dumps(self.options(section), sort_keys=True)
        out: dict[str, Case] = {}
        natural = bool(section.get("natural_mask", True))
        for entry in methods:
            params = method_params(section, entry)
            for backend in entry.backends:
                if not preset.selects(entry.name, backend.value, self.name):
                    continue
                for w in self.case_workloads(section, device):
                    if natural:
                        w = natural_form(entry, w)
                    case = Case(self.name, entry.name, backend.value, w, params_json(params),
                                seed=int(section.get("seed", 0)), preset=preset.name,
                                suite_version=self.version, options=options)
                    out.setdefault(case.case_id, case)
        return list(out.values())

    def case_workloads(self, section: dict[str, Any], device: str) -> list[Workload]:
        return workloads(section, device)
