"""Turn a Case into a ready-to-time call: inputs built, setup done (and timed), mode applied.

Shared by the latency, memory, scaling and flops suites so every one runs a case the same way.
Functional methods get q, k, v; layer methods get x and a module built from a fixed seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from attnbench.inputs import make_qkv, make_x
from attnbench.layers import build_layer
from attnbench.metrics import DENSE_BASELINE
from attnbench.registry import METHODS, MethodEntry
from attnbench.spec import Backend, Params, Workload, run_params
from attnbench.suite import ResolvedCase
from attnbench.timing import synchronize

Diagnostic = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Params], dict[str, float]]
DIAGNOSTICS: dict[str, Diagnostic] = {}


def register_diagnostics(spec: Any, fn: Diagnostic) -> None:
    """Register `fn(q, k, v, params) -> {metric: value}`: what a method's mechanism did on the
    evaluated input (e.g. PARO's mask recall); suites emit the metrics they declare."""
    DIAGNOSTICS[spec.name] = fn


def diagnostics(entry: MethodEntry, w: Workload, params: Params, *, seed: int = 0) -> dict[str, float]:
    """The method's diagnostics on the suites' input for `w` (`make_qkv(w, seed)`, fp32); {} if none."""
    fn = DIAGNOSTICS.get(entry.name)
    if fn is None or entry.spec.kind != "functional":
        return {}
    q, k, v = make_qkv(w, seed=seed, dtype=torch.float32)
    with torch.no_grad():
        return fn(q, k, v, run_params(w, params))


@dataclass
class PreparedCall:
    """`call()` runs one unit of the case's mode; `setup_ms` is what preparing it cost."""

    call: Callable[[], Any]
    setup_ms: float
    forward: Callable[[], torch.Tensor]


def workload_for(entry: MethodEntry, w: Workload, params: Params) -> Workload:
    """The workload as the method runs it; raises ValueError with the reason when impossible."""
    shaped = entry.spec.shape(w, params)
    why = entry.spec.why_not(shaped, params)
    if why:
        raise ValueError(why)
    return shaped


def dense_baseline() -> tuple[MethodEntry, Backend]:
    """The method entry and backend of `metrics.DENSE_BASELINE` (every speedup's denominator)."""
    method, _, backend = DENSE_BASELINE.partition("/")
    return METHODS.get(method), Backend(backend)


def prepare_case(rc: ResolvedCase, w: Workload | None = None) -> PreparedCall:
    """`prepare_call` for a resolved case (at `w` instead of its own workload when given)."""
    return prepare_call(rc.entry, rc.backend, rc.workload if w is None else w, rc.params, seed=rc.seed)


def prepare_call(entry: MethodEntry, backend: Backend, w: Workload, params: Params, *,
                 seed: int = 0, as_layer: bool = False) -> PreparedCall:
    """Build inputs for `w` (already shaped) and prepare `entry`'s `backend` to run `w.mode`.

    `as_layer` runs a functional method inside the generic layer (projections included), so it
    can be compared with layer methods.
    """
    method = entry.name
    grad = w.mode != "fwd"
    t0 = time.perf_counter_ns()
    if entry.spec.kind == "layer" or as_layer:
        torch.manual_seed(seed)
        module = build_layer(method, backend, w.d_model, w.heads_q, kv_heads=w.heads_kv, causal=w.causal,
                             params=params, spatial=w.spatial)
        module = module.to(device=w.device, dtype=w.torch_dtype).eval()
        x = make_x(w, seed=seed, requires_grad=grad)
        forward: Callable[[], torch.Tensor] = lambda: module(x)
        leaves: list[torch.Tensor] = [x, *[p for p in module.parameters() if p.requires_grad]]
    else:
        q, k, v = make_qkv(w, seed=seed, requires_grad=grad)
        attn = entry.impl(backend).prepare(q, k, v, causal=w.causal, params=run_params(w, params))
        forward = lambda: attn(q, k, v)
        leaves = [q, k, v]
    synchronize(w.device)
    setup_ms = (time.perf_counter_ns() - t0) / 1e6
    return PreparedCall(_mode_call(w.mode, forward, leaves), setup_ms, forward)


def _mode_call(mode: str, forward: Callable[[], torch.Tensor], leaves: list[torch.Tensor]
               ) -> Callable[[], Any]:
    if mode == "fwd":
        def fwd() -> torch.Tensor:
            with torch.no_grad():
                return forward()
        return fwd
    if mode == "fwd_bwd":
        def fwd_bwd() -> None:
            out = forward()
            out.backward(torch.ones_like(out))
            for t in leaves:
                t.grad = None
        return fwd_bwd
    out = forward()
    grad_out = torch.ones_like(out)

    def bwd() -> None:
        torch.autograd.grad(out, leaves, grad_out, retain_graph=True, allow_unused=True)
    return bwd
