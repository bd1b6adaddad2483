"""Correctness suite: every fused backend against the method's reference on random inputs.

The reference runs in float64 (the oracle). A backend passes when its error is within the
method's tolerance for the dtype, or within twice what the reference itself loses when run in
that dtype (precision-relative, as attention-gym does). Gradients are compared wherever the
backend supports backward. NaN/Inf where the oracle has none fails the case (`wrong`).
Methods that register diagnostics (`execute.register_diagnostics`) add what their mechanism did on
the evaluated input, e.g. PARO's `mask_recall` and `incoherence` for its frozen calibrated mask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from attnbench.execute import diagnostics
from attnbench.inputs import make_qkv, make_x
from attnbench.kernelsuite import KernelSuite
from attnbench.layers import build_layer
from attnbench.metrics import info
from attnbench.registry import MethodEntry, register_suite
from attnbench.spec import Backend, Status, Tolerance, Workload, run_params
from attnbench.suite import ResolvedCase, Row


@dataclass
class Outputs:
    out: torch.Tensor
    grads: list[torch.Tensor | None]


def run_method(entry: MethodEntry, backend: Backend, w: Workload, params: dict[str, Any], *, dtype: torch.dtype,
               seed: int, grads: bool, state: dict[str, torch.Tensor] | None = None) -> Outputs:
    """Forward (and optionally backward with a fixed upstream gradient) in `dtype`."""
    if entry.spec.kind == "layer":
        torch.manual_seed(seed)
        module = build_layer(entry.name, backend, w.d_model, w.heads_q, kv_heads=w.heads_kv, causal=w.causal,
                             params=params, spatial=w.spatial).eval()
        if state is not None:
            module.load_state_dict(state)
        module = module.to(device=w.device, dtype=dtype)
        x = make_x(w, seed=seed, dtype=dtype, requires_grad=grads)
        leaves = [x]
        fn: Callable[[], torch.Tensor] = lambda: module(x)
    else:
        q, k, v = make_qkv(w, seed=seed, dtype=dtype, requires_grad=grads)
        leaves = [q, k, v]
        attn = entry.impl(backend).prepare(q, k, v, causal=w.causal, params=run_params(w, params))
        fn = lambda: attn(q, k, v)
    if not grads:
        with torch.no_grad():
            return Outputs(fn(), [])
    out = fn()
    gen = torch.Generator().manual_seed(seed + 1)
    upstream = torch.randn(out.shape, generator=gen).to(out.device, out.dtype)
    return Outputs(out.detach(), list(torch.autograd.grad(out, leaves, upstream, allow_unused=True)))


def max_errors(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    diff = (got.double() - want.double()).abs()
    rel = diff / want.double().abs().clamp_min(1e-6)
    return float(diff.max()), float(rel.max())


def within(err: float, scale: float, lowp_err: float, tol: Tolerance) -> bool:
    return err <= max(tol.atol + tol.rtol * scale, 2.0 * lowp_err + tol.atol)


@register_suite
class Correctness(KernelSuite):
    name = "correctness"
    version = 1
    metrics = (
        info("max_abs_err", label="max abs err", role="error"),
        info("max_rel_err", label="max rel err"),
        info("ref_lowp_err", label="reference low-precision err"),
        info("grad_max_abs_err", label="grad max abs err"),
        info("mask_recall", "ratio", label="mask recall"),
        info("incoherence", "ratio", label="block incoherence"),
    )
    include_reference = False

    def run(self, rc: ResolvedCase) -> list[Row]:
        entry, params, case, backend = rc.entry, rc.params, rc.case, rc.backend
        w = rc.workload.replace(mode="fwd")
        grads = entry.why_not(backend, w.replace(mode="bwd"), params) is None
        state = None
        if entry.spec.kind == "layer":
            torch.manual_seed(case.seed)
            state = build_layer(entry.name, Backend.REFERENCE, w.d_model, w.heads_q, kv_heads=w.heads_kv,
                                causal=w.causal, params=params, spatial=w.spatial).state_dict()
        kw = dict(seed=case.seed, grads=grads, state=state)
        oracle = run_method(entry, Backend.REFERENCE, w, params, dtype=torch.float64, **kw)
        lowp = run_method(entry, Backend.REFERENCE, w, params, dtype=w.torch_dtype, **kw)
        got = run_method(entry, backend, w, params, dtype=w.torch_dtype, **kw)
        tol = entry.spec.tol(w.dtype)
        rows, failures = [], []
        pairs = [("", got.out, oracle.out, lowp.out)]
        pairs += [(f"grad{i}_", g, o, lp) for i, (g, o, lp)
                  in enumerate(zip(got.grads, oracle.grads, lowp.grads, strict=True)) if o is not None]
        worst_grad = 0.0
        for prefix, g, o, lp in pairs:
            if g is None:
                failures.append(f"{prefix or 'output'} missing")
                continue
            if not torch.isfinite(g).all() and torch.isfinite(o).all():
                failures.append(f"{prefix or 'output '}has NaN/Inf")
                continue
            abs_err, rel_err = max_errors(g, o)
            lowp_err, _ = max_errors(lp, o)
            if not within(abs_err, float(o.abs().max()), lowp_err, tol):
                failures.append(f"{prefix or 'output '}max abs err {abs_err:.3g} > tolerance "
                                f"(atol {tol.atol:g}, rtol {tol.rtol:g}, reference-in-dtype err {lowp_err:.3g})")
            if prefix:
                worst_grad = max(worst_grad, abs_err)
            else:
                rows += [Row("max_abs_err", abs_err), Row("max_rel_err", rel_err),
                         Row("ref_lowp_err", lowp_err)]
        if len(pairs) > 1:
            rows.append(Row("grad_max_abs_err", worst_grad))
        declared = {m.name for m in self.metrics}
        rows += [Row(name, value, "ratio") for name, value in
                 diagnostics(entry, w, params, seed=case.seed).items() if name in declared]
        status = Status.WRONG if failures else Status.OK
        return [Row(r.metric, r.value, r.unit, status=status, error="; ".join(failures)) for r in rows] or \
            [Row("max_abs_err", None, status=Status.WRONG, error="; ".join(failures))]
