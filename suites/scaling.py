"""Scaling suite: latency over a sweep of N per method/backend and the fitted cost exponent.

One case per method × backend × (batch, heads, dtype, causal, mode); `seq_lens` is the sweep
(points the method cannot run, e.g. a non-square N for a 2-D method, are unsupported rows).
`cost_exponent` is the least-squares slope of log(latency) on log(N) (2 = quadratic, 1 = linear).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from attnbench.execute import prepare_case, workload_for
from attnbench.kernelsuite import KernelSettings, KernelSuite, as_list, timing_options, workloads
from attnbench.metrics import info, lower
from attnbench.registry import register_suite
from attnbench.spec import Status, Workload
from attnbench.suite import ResolvedCase, Row
from attnbench.timing import bench


def fit_exponent(ns: list[int], ms: list[float]) -> float:
    """Slope of log(ms) against log(n)."""
    xs, ys = [math.log(n) for n in ns], [math.log(m) for m in ms]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


@register_suite
class Scaling(KernelSuite):
    name = "scaling"
    version = 1
    metrics = (
        lower("latency_ms", "ms", timed=True, label="latency", headline=True, role="time"),
        info("cost_exponent", label="cost exponent"),
    )

    def options(self, s: KernelSettings, section: dict[str, Any]) -> dict[str, Any]:
        sweep = as_list(s.seq_lens) if "seq_lens" in section else [256, 512, 1024]
        return {"seq_lens": sorted(sweep), **timing_options(s, section, ("min_time_s", "max_reps", "warmup_s"))}

    def case_workloads(self, s: KernelSettings, device: str) -> list[Workload]:
        return workloads(dataclasses.replace(s, seq_lens=[min(as_list(s.seq_lens))]), device)

    def run(self, rc: ResolvedCase) -> list[Row]:
        entry, params, case = rc.entry, rc.params, rc.case
        opts = rc.options
        ns, ms, rows = [], [], []
        for n in opts.pop("seq_lens"):
            try:
                w = workload_for(entry, case.workload.replace(seq_q=n, seq_kv=n), params)
            except ValueError as exc:  # e.g. a 2-D method at a non-square N: that point only
                rows.append(Row("latency_ms", None, "ms", status=Status.UNSUPPORTED, error=str(exc),
                                extra={"seq_len": n, "seq_kv": n}))
                continue
            t = bench(prepare_case(rc, w).call,
                      device=w.device, **opts)
            ns.append(n)
            ms.append(t.median)
            rows.append(Row("latency_ms", t.median, "ms", "median", t.n, t.p20, t.p80, t.samples_ms,
                            extra={"seq_len": n, "seq_kv": n}))
        if len(ns) >= 2:
            rows.append(Row("cost_exponent", fit_exponent(ns, ms), "", "fit", len(ns)))
        return rows
