"""Shared plumbing of the Triton backends: lazy kernel loading, `can_run`, launch sizes.

Triton is an optional extra: nothing here imports it at module level. `@triton.jit` picks the
interpreter or the compiler when a kernel is *defined*, so kernel modules (`_tl_*.py`) are imported
on first use and re-imported when `TRITON_INTERPRET` changed since (tests flip it).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from types import ModuleType

import torch

from attnbench.device import backend_unavailable, triton_interpreted
from attnbench.spec import Backend, Workload

TRITON_DTYPES = ("float32", "float16", "bfloat16")


def load(name: str) -> ModuleType:
    """Import `attnbench.kernels.<name>` (a `_tl_*` kernel module) under the current interpreter mode."""
    if name != "_tl_ops":
        load("_tl_ops")  # the shared reductions first, so the kernel module binds this mode's ones
    full = f"attnbench.kernels.{name}"
    mod = sys.modules.get(full)
    if mod is not None and getattr(mod, "INTERPRETED", None) == triton_interpreted():
        return mod
    mod = importlib.reload(mod) if mod is not None else importlib.import_module(full)
    mod.INTERPRETED = triton_interpreted()
    return mod


def triton_can_run(w: Workload, *, backward: bool = False) -> str | None:
    """Machine, dtype and mode limits shared by every Triton kernel here."""
    if (why := backend_unavailable(Backend.TRITON, w.device)) is not None:
        return why
    if w.device == "cpu" and not triton_interpreted():
        return "triton needs CUDA (or TRITON_INTERPRET=1)"
    if w.dtype not in TRITON_DTYPES:
        return f"the triton kernels take {', '.join(TRITON_DTYPES)}, not {w.dtype}"
    if w.mode != "fwd" and not backward:
        return "this triton kernel is forward only"
    return None


def warm(run: Callable[..., torch.Tensor], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """One call during setup so the JIT compile lands in `setup_ms`, not in the timed steady state
    (skipped under the interpreter, which compiles nothing)."""
    if not triton_interpreted():
        with torch.no_grad():
            run(q.detach(), k.detach(), v.detach())


def pow2(n: int, floor: int = 16) -> int:
    """Smallest power of two ≥ max(n, floor) (tl.arange and tl.dot sizes)."""
    return max(floor, 1 << (max(n, 1) - 1).bit_length())


def precision(t: torch.Tensor) -> str:
    """`tl.dot` input precision: exact fp32 for fp32 inputs (tf32 would miss fp32 tolerances)."""
    return "ieee" if t.dtype == torch.float32 else "tf32"


def tile(interpreted_size: int, gpu_size: int) -> int:
    """Tile edge: small under the interpreter (each program is Python), larger on a GPU."""
    return interpreted_size if triton_interpreted() else gpu_size
