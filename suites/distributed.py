"""Distributed suite: context-parallel attention on P real ranks (spawned processes, gloo on CPU / nccl on CUDA).

Runs the `distributed` family (ring_attention, allgather_kv, ulysses) through attnbench.distributed: each
case spawns `world_size` ranks (the suite's `world_size` setting, else the method's param, default 2), times
lock-step calls (each rep is the slowest rank's time), and in the same case spawns one rank (P = 1) for the
scaling efficiency `t1 / (P · tP)`. Rows: latency_ms (median over reps), peak_mem_bytes_rank (max over ranks;
CPU: VmHWM above the baseline, as attnbench.memory), comm_bytes (bytes one rank sends in forward, measured from
the tensors passed; max over ranks) next to comm_bytes_analytic, scaling_efficiency and max_abs_err against
the single-process dense reference (status `wrong` when over the method's tolerance).
The `native` backend column is the variant itself (its in-process form is the simulated loop the other suites
time); the reference backend is only the oracle here. Not in the built-in presets: `--suites distributed`.
"""

from __future__ import annotations

import dataclasses
import json
from functools import partial
from typing import Any

import torch

from attnbench import distributed as cp
from attnbench import memory
from attnbench.kernelsuite import KernelSettings, KernelSuite, Positive, as_list, method_params, natural_form
from attnbench.metrics import HIGHER, MIB, MetricSpec, info, lower
from attnbench.presets import Preset
from attnbench.registry import MethodEntry, Registry, register_suite
from attnbench.settings import resolve, settings
from attnbench.spec import Backend, Status, params_json
from attnbench.suite import Case, ResolvedCase, Row, status_row
from attnbench.timing import Timing

FAMILY = "distributed"


@settings
class DistributedSettings(KernelSettings):
    """Kernel settings plus the rank count(s) and threads per rank (max_reps = timed reps, in lock-step)."""

    world_size: Positive | list[Positive] | None = None
    threads_per_rank: Positive = 1


@register_suite
class Distributed(KernelSuite):
    name = "distributed"
    version = 1
    include_reference = False
    metrics = (
        lower("latency_ms", "ms", timed=True, label="latency", headline=True, role="time"),
        lower("peak_mem_bytes_rank", "B", floor=MIB, label="peak memory / rank", headline=True),
        info("comm_bytes", "B", label="sent / rank"),
        info("comm_bytes_analytic", "B", label="sent / rank (analytic)"),
        MetricSpec("scaling_efficiency", "ratio", HIGHER, timed=True, label="scaling efficiency", headline=True),
        info("max_abs_err", label="max abs err", role="error"),
    )

    def settings(self, preset: Preset) -> DistributedSettings:
        return resolve(DistributedSettings, preset.section(self.name), where=f"suite.{self.name}")

    def options(self, s: KernelSettings, section: dict[str, Any]) -> dict[str, Any]:
        return {k: getattr(s, k) for k in ("max_reps", "threads_per_rank") if k in section}

    def applies_to(self, entry: MethodEntry, backend: Backend) -> str | None:
        if entry.spec.family != FAMILY or entry.name not in cp.VARIANTS:
            return f"the distributed suite runs context-parallel methods (family {FAMILY!r}) only"
        if backend == Backend.REFERENCE:
            return "the reference is the distributed run's single-process oracle"
        return None

    def cases(self, preset: Preset, methods: Registry[MethodEntry]) -> list[Case]:
        """Family-`distributed` methods × backends × workloads × world sizes (sizes go into the params)."""
        s, section = self.settings(preset), preset.section(self.name)
        options = json.dumps(self.options(s, section), sort_keys=True)
        out: dict[str, Case] = {}
        for entry in methods:
            if entry.spec.family != FAMILY:
                continue
            base = method_params(s, entry)
            sizes = as_list(s.world_size) if s.world_size is not None else [base.get("world_size")]
            for backend in entry.backends:
                if not preset.selects(entry.name, backend.value, self.name):
                    continue
                for w, ws in ((w, ws) for w in self.case_workloads(s, preset.device) for ws in sizes):
                    w = natural_form(entry, w) if s.natural_mask else w
                    params = {**base, **({"world_size": ws} if ws is not None else {})}
                    case = Case(self.name, entry.name, backend.value, w, params_json(params), seed=s.seed,
                                preset=preset.name, suite_version=self.version, options=options)
                    out.setdefault(case.case_id, case)
        return list(out.values())

    def run(self, rc: ResolvedCase) -> list[Row]:
        w, params, opts = rc.workload, rc.params, rc.options
        world = int(params["world_size"])
        if w.device.startswith("cuda") and torch.cuda.device_count() < world:
            return [status_row(Status.UNSUPPORTED, f"world_size={world} needs {world} GPUs, "
                                                   f"{torch.cuda.device_count()} visible")]
        defaults = {f.name: f.default for f in dataclasses.fields(DistributedSettings)}
        reps = int(opts.get("max_reps", defaults["max_reps"]))
        threads = int(opts.get("threads_per_rank", defaults["threads_per_rank"]))
        variant = rc.method  # attnbench.distributed names its variants after the methods
        shape = {"batch": w.batch, "heads": w.heads_q, "kv_heads": w.heads_kv, "n": w.seq_q,
                 "head_dim": w.head_dim, "dtype": w.dtype, "causal": w.causal}
        fn = partial(cp.bench_rank, mode=w.mode, reps=reps, warmup=1, seed=rc.seed, threads=threads)
        env = dict(memory._WORKER_ENV) if w.device == "cpu" else {}
        ranks = cp.spawn(world, fn, variant, shape, env=env)
        t = Timing(tuple(ranks[0]["samples_ms"]))  # per rep, already the max over ranks
        lat = t.median
        t1 = lat if world == 1 else Timing(tuple(cp.spawn(1, partial(fn, measure_memory=False), variant, shape,
                                                         env=env)[0]["samples_ms"])).median
        elem = torch.finfo(w.torch_dtype).bits // 8
        analytic = cp.analytic_bytes(variant, batch=w.batch, heads=w.heads_q, kv_heads=w.heads_kv, n=w.seq_q,
                                     head_dim=w.head_dim, elem=elem, world=world, causal=w.causal)
        err, why = self.check(rc, torch.from_numpy(ranks[0]["out"]))
        status = Status.WRONG if why else Status.OK
        rows = [Row("latency_ms", lat, "ms", "median", t.n, t.p20, t.p80, t.samples_ms),
                Row("comm_bytes", float(max(r["sent_bytes"] for r in ranks)), "B", "max"),
                Row("comm_bytes_analytic", float(analytic), "B"),
                Row("scaling_efficiency", t1 / (world * lat), "ratio", "median"),
                Row("max_abs_err", err)]
        peaks = [r["peak_bytes"] for r in ranks if r["peak_bytes"] is not None]
        if peaks:
            rows.insert(1, Row("peak_mem_bytes_rank", float(max(peaks)), "B", "max"))
        return [dataclasses.replace(r, status=status, error=why) for r in rows]

    def check(self, rc: ResolvedCase, got: torch.Tensor) -> tuple[float, str]:
        """Max abs error of the gathered output against the method's single-process reference (float64, the
        oracle), and why it fails (over the dtype's tolerance and over twice the reference's own error in dtype)."""
        w, tol, ref = rc.workload, rc.spec.tol(rc.workload.dtype), rc.entry.reference.fn
        gen = torch.Generator().manual_seed(rc.seed)  # the inputs bench_rank drew
        lowp_in = [torch.randn(w.batch, h, w.seq_q, w.head_dim, generator=gen).to(w.torch_dtype)
                   for h in (w.heads_q, w.heads_kv, w.heads_kv)]
        oracle = ref(*(t.double() for t in lowp_in), causal=w.causal, **rc.params)
        lowp = ref(*lowp_in, causal=w.causal, **rc.params).double()
        err = float((got - oracle).abs().max())
        lowp_err = float((lowp - oracle).abs().max())
        bound = max(tol.atol + tol.rtol * float(oracle.abs().max()), 2 * lowp_err + tol.atol)
        return err, "" if err <= bound else f"max abs err {err:.3g} > tolerance {bound:.3g}"

