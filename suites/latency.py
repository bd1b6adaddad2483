"""Latency suite: steady-state time per call (fwd, bwd, fwd_bwd), setup time apart, derived rates.

Rows: latency_ms (median, p20/p80, every sample); setup_ms (input-independent preparation only:
compilation, static masks, calibration — routing that depends on the input runs inside the timed
call); tflops and pct_peak from the analytic useful FLOPs (routing included); speedup_vs_dense
against `metrics.DENSE_BASELINE` (mha/sdpa) on the same shape timed in alternation with the case
(layer methods: against the mha layer, projections included); speedup_bound = dense FLOPs /
executed FLOPs of the backend that ran (`flops.backend_flops`: its own tiles, heads, routing) and
realisation = speedup / bound, both only for backends that model their execution; sim_speedup
(NATTENSim's multi-dimensional tile bound, 2-D/3-D NA/GNA); effective_density (sparse methods: the
share of allowed pairs their reference attends at this shape and params, so a sparse row at a
length where it is dense is greyed on the board instead of read as the method's speed).
"""

from __future__ import annotations

import functools
import json
from typing import Any

from attnbench import density
from attnbench.device import capture, peak_tflops
from attnbench.execute import dense_baseline, prepare_call, prepare_case
from attnbench.flops import backend_flops, dense_flops, projection_flops, sim_speedup, speedup_bound
from attnbench.kernelsuite import KernelSettings, KernelSuite, timing_options
from attnbench.metrics import HIGHER, MetricSpec, info, lower
from attnbench.proxy.suite import EFFECTIVE_DENSITY
from attnbench.registry import METHODS, MethodEntry, register_suite
from attnbench.spec import Backend, FlopCount, Params, Workload, params_json
from attnbench.suite import ResolvedCase, Row
from attnbench.timing import bench, bench_interleaved

# Backward ≈ 2.5× forward FLOPs (two matmuls for dS·K, dS·Q plus recomputation), as FA-2 counts.
MODE_FLOP_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd_bwd": 3.5}


def method_flops(entry: MethodEntry, backend: Backend, w: Workload, params: Params) -> FlopCount:
    """The backend's FLOPs (useful from the spec; executed None without a model of its own)."""
    fc = backend_flops(entry.spec, entry.impl(backend), w, params)
    return fc if fc is not None else FlopCount(useful=dense_flops(w).useful)


def dense_total(entry: MethodEntry, dense_w: Workload) -> float:
    """Dense FLOPs of the baseline the speedup divides by (the mha layer for layer methods)."""
    total = dense_flops(dense_w).useful
    return total + projection_flops(dense_w) if entry.spec.kind == "layer" else total


@register_suite
class Latency(KernelSuite):
    name = "latency"
    version = 1
    metrics = (
        lower("latency_ms", "ms", timed=True, label="latency", headline=True, role="time"),
        lower("setup_ms", "ms", timed=True, label="setup"),
        MetricSpec("tflops", "TFLOP/s", HIGHER, timed=True, label="TFLOP/s", headline=True),
        MetricSpec("pct_peak", "%", HIGHER, timed=True, label="% of peak", headline=True),
        MetricSpec("speedup_vs_dense", "x", HIGHER, timed=True, label="speedup vs dense", headline=True,
                   role="speedup", same_run_ratio=True),
        info("speedup_bound", "x", label="speedup bound"),
        MetricSpec("realisation", "ratio", HIGHER, timed=True, label="realisation", same_run_ratio=True),
        info("sim_speedup", "x", label="tile-sim bound"),
        EFFECTIVE_DENSITY,
    )

    def options(self, s: KernelSettings, section: dict[str, Any]) -> dict[str, Any]:
        return timing_options(s, section)

    def run(self, rc: ResolvedCase) -> list[Row]:
        entry, params, w, case = rc.entry, rc.params, rc.workload, rc.case
        call = prepare_case(rc)
        dense_w = case.workload.replace(heads_kv=case.workload.heads_q)
        dense_entry, dense_backend = dense_baseline()
        if (entry, rc.backend) == (dense_entry, dense_backend) and dense_w == w:
            t = base = bench(call.call, device=w.device, **rc.options)
        else:  # the dense baseline is timed in alternation with the case: same run, same noise
            dense = prepare_call(dense_entry, dense_backend, dense_w, {}, as_layer=entry.spec.kind == "layer")
            t, base = bench_interleaved([call.call, dense.call], device=w.device, **rc.options)
        rows = [Row("latency_ms", t.median, "ms", "median", t.n, t.p20, t.p80, t.samples_ms),
                Row("setup_ms", call.setup_ms, "ms")]
        flops = method_flops(entry, rc.backend, w, params)
        factor = MODE_FLOP_FACTOR[w.mode]
        tflops = flops.useful * factor / (t.median * 1e-3) / 1e12
        rows.append(Row("tflops", tflops, "TFLOP/s", "median"))
        peak = peak_tflops(capture(w.device).device_name, w.dtype) if w.device != "cpu" else None
        if peak:
            rows.append(Row("pct_peak", 100.0 * tflops / peak, "%", "median"))
        speedup = base.median / t.median
        rows.append(Row("speedup_vs_dense", speedup, "x", "median"))
        bound = speedup_bound(dense_total(entry, dense_w), flops.executed)
        if bound:
            rows += [Row("speedup_bound", bound, "x"), Row("realisation", speedup / bound, "ratio")]
        sim = sim_speedup(entry.spec, w, params)
        if sim:
            rows.append(Row("sim_speedup", sim, "x"))
        if entry.spec.at_density is not None:  # a sparse method: how sparse is it at this shape?
            probe_w = w.replace(batch=1, mode="fwd", dtype="float32", device="cpu")
            if (d := _probed_density(entry.name, probe_w, params_json(params))) is not None:
                rows.append(Row("effective_density", d, "ratio"))
        return rows


@functools.lru_cache(maxsize=256)
def _probed_density(method: str, w: Workload, params: str) -> float | None:
    """`density.probe` once per method, shape and params (every backend shares the reference's mask)."""
    return density.probe(METHODS.get(method), w, json.loads(params))
