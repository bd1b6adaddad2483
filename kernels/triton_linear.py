"""Triton backend of `linear`: the chunked causal (and non-causal) form in one kernel per head.

The kernel (`_tl_linear.py`, imported on first use) keeps the running state in registers, so the
O(N·L·D + N·D²) chunked algorithm of the `native` backend runs without materialising per-chunk
states. Forward only. Runs on CUDA, or on CPU under `TRITON_INTERPRET=1` (tests, tiny shapes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from attnbench.impls.linear import SPEC, check_linear
from attnbench.kernels._triton_util import load, triton_can_run, warm
from attnbench.registry import register_backend
from attnbench.spec import Backend, Params, Workload


def linear_triton_can_run(w: Workload, params: Params) -> str | None:
    return triton_can_run(w) or check_linear(w, params)


@register_backend(SPEC, Backend.TRITON, can_run=linear_triton_can_run, staged=True)
def linear_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                  feature_map: str = "elu", normalize: bool = True,
                  chunk_size: int = 64) -> Callable[..., torch.Tensor]:
    """Staged: compile with one warm call (setup), return `(q, k, v) -> o` as the reference `linear`.

    `chunk_size` is the native backend's; the kernel uses its own tile (64 rows on a GPU).
    """
    if causal and q.shape[-2] > k.shape[-2]:
        raise ValueError(f"linear: causal needs Nq <= Nk, got {q.shape[-2]} > {k.shape[-2]}")
    kern = load("_tl_linear")

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return kern.linear_forward(q, k, v, causal=causal, feature_map=feature_map, normalize=normalize)

    warm(run, q, k, v)
    return run
