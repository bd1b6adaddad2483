"""Reductions and fills for the `_tl_*` kernels, defined here rather than taken from `triton.language`.

triton's own `tl.sum`/`tl.max`/`tl.zeros` are `@jit` functions created when triton is imported; if
that happened before `TRITON_INTERPRET=1` was set (a test process), the interpreter refuses to call
them. These are created when the kernel modules load (`_triton_util.load`), under the current mode,
and compile to the same reductions on a GPU.
"""

from __future__ import annotations

import triton
import triton.language as tl

INTERPRETED = False  # set by _triton_util.load


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _larger(a, b):
    return tl.maximum(a, b)


@triton.jit
def _smaller(a, b):
    return tl.minimum(a, b)


@triton.jit
def rsum(x, axis: tl.constexpr):
    return tl.reduce(x, axis, _add)


@triton.jit
def rmax(x, axis: tl.constexpr):
    return tl.reduce(x, axis, _larger)


@triton.jit
def rmin(x, axis: tl.constexpr):
    return tl.reduce(x, axis, _smaller)
