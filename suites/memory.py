"""Memory suite: measured peak above the inputs, plus analytic score-matrix and KV-cache bytes.

CUDA: `max_memory_allocated` above the baseline. CPU: the kernel's resettable peak RSS in a
worker process (see attnbench.memory). Setup (compile, static masks, calibration) happens before the
peak reset; input-dependent routing (MoBA/VMoBA/DMA masks) runs inside the measured call.
"""

from __future__ import annotations

from typing import Any

import torch

from attnbench import memory
from attnbench.execute import prepare_case
from attnbench.kernelsuite import KernelSuite
from attnbench.metrics import MIB, info, lower
from attnbench.registry import METHODS, load_plugins, register_suite
from attnbench.suite import Case, ResolvedCase, Row


def measure_peak(case_json: str) -> dict[str, Any]:
    """Worker entry: prepare the case, then measure one call's peak (bytes above baseline)."""
    load_plugins()
    rc = ResolvedCase.resolve(Case.from_json(case_json), METHODS)  # this is a fresh process
    w = rc.workload
    call = prepare_case(rc)
    call.call()  # warm: lazy allocations and caches are not the kernel's working set
    if w.device.startswith("cuda"):
        return {"peak": memory.cuda_peak_above_baseline(call.call)}
    return {"peak": memory.peak_rss_above_baseline(call.call)}


@register_suite
class Memory(KernelSuite):
    name = "memory"
    version = 1
    metrics = (
        lower("peak_mem_bytes", "B", floor=MIB, label="peak memory", headline=True),
        info("attn_matrix_bytes", "B", label="attn matrix"),
        info("kv_cache_bytes", "B", label="KV cache"),
    )

    def run(self, rc: ResolvedCase) -> list[Row]:
        entry, params, w, case = rc.entry, rc.params, rc.workload, rc.case
        if w.device == "cpu":
            why = memory.cpu_peak_supported()
            if why:
                raise RuntimeError(why)
            peak = memory.in_worker(measure_peak, case.to_json())["peak"]
        else:
            peak = measure_peak(case.to_json())["peak"]
        elem = torch.finfo(w.torch_dtype).bits // 8
        rows = [Row("peak_mem_bytes", float(peak), "B", "max"),
                Row("attn_matrix_bytes", float(w.batch * w.heads_q * w.seq_q * w.seq_kv * elem), "B")]
        if entry.spec.kv_cache_bytes:
            rows.append(Row("kv_cache_bytes", float(entry.spec.kv_cache_bytes(w, params)), "B"))
        return rows
