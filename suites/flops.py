"""FLOPs suite: analytic useful/executed/softmax FLOPs, FlopCounterMode cross-check, KV-cache bytes.

`flops_executed` is the backend's own count (`flops.backend_flops`: the tiles, heads or padded
branches that backend computes, routing included); a backend without such a model has no row.
`sim_speedup`: NATTENSim's multi-dimensional tile bound (2-D/3-D NA/GNA).

`flops_vs_dense` divides by dense MHA on the same shape (the mha layer, projections included, for
layer methods, whose counts include their own projections).
"""

from __future__ import annotations

from attnbench.execute import prepare_case
from attnbench.flops import backend_flops, counted_flops, dense_flops, projection_flops, sim_speedup
from attnbench.kernelsuite import KernelSuite
from attnbench.metrics import info
from attnbench.registry import register_suite
from attnbench.spec import Backend
from attnbench.suite import ResolvedCase, Row

# FlopCounterMode raises inside flex_attention, and a failed trace under it poisons dynamo's cache.
UNCOUNTABLE = (Backend.FLEX, Backend.FLEX_COMPILED, Backend.NATTEN)  # natten runs flex inside


@register_suite
class Flops(KernelSuite):
    name = "flops"
    version = 1
    metrics = (
        info("flops_useful", "FLOP", label="FLOPs useful", headline=True),
        info("flops_executed", "FLOP", label="FLOPs executed"),
        info("flops_softmax", "FLOP", label="FLOPs softmax"),
        info("flops_vs_dense", "ratio", label="FLOPs vs dense"),
        info("flops_counted", "FLOP", label="FLOPs counted"),
        info("flops_counted_ratio", "ratio", label="counted / analytic"),
        info("kv_cache_bytes", "B", label="KV cache"),
        info("sim_speedup", "x", label="tile-sim bound"),
    )

    def run(self, rc: ResolvedCase) -> list[Row]:
        entry, params = rc.entry, rc.params
        w = rc.workload.replace(mode="fwd")
        fc = backend_flops(entry.spec, entry.impl(rc.backend), w, params) or dense_flops(w)
        dense = dense_flops(w.replace(heads_kv=w.heads_q)).useful
        if entry.spec.kind == "layer":  # layer methods count their projections: compare with the mha layer
            dense += projection_flops(w.replace(heads_kv=w.heads_q))
        rows = [Row("flops_useful", fc.useful, "FLOP"), Row("flops_softmax", fc.softmax, "FLOP"),
                Row("flops_vs_dense", fc.useful / dense, "ratio")]
        if fc.executed is not None:
            rows.append(Row("flops_executed", fc.executed, "FLOP"))
        if entry.spec.kv_cache_bytes:
            rows.append(Row("kv_cache_bytes", float(entry.spec.kv_cache_bytes(w, params)), "B"))
        sim = sim_speedup(entry.spec, w, params)
        if sim:
            rows.append(Row("sim_speedup", sim, "x"))
        if rc.backend in UNCOUNTABLE:
            return rows
        call = prepare_case(rc, w)
        counted = counted_flops(call.call)
        if counted:  # None: not countable (flex); 0: ops the counter has no formula for
            rows += [Row("flops_counted", counted, "FLOP"),
                     Row("flops_counted_ratio", counted / fc.useful if fc.useful else None, "ratio")]
        return rows
