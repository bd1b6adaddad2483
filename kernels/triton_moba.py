"""Triton backend of `moba`: the router in torch, attention over the selected key blocks in one kernel.

The parameter-free router (`moba_select`: block means, gate, top-k with the own block forced) is
the reference's own; the kernel then visits, per query tile, only key blocks that some row of the
tile selected (`_tl_moba.py`). Forward only; causal self-attention, as the method.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from attnbench import density
from attnbench.impls.moba import SPEC, moba_mask, moba_select
from attnbench.kernels._triton_util import load, tile, triton_can_run, warm
from attnbench.registry import register_backend
from attnbench.spec import Backend, Params, Workload


def moba_triton_can_run(w: Workload, params: Params) -> str | None:
    return triton_can_run(w)


@register_backend(SPEC, Backend.TRITON, can_run=moba_triton_can_run, staged=True)
def moba_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True, block_size: int = 512,
                topk: int = 3) -> Callable[..., torch.Tensor]:
    """Staged: compile with one warm call (setup); the steady state routes and attends per call.

    Same arguments and result as the reference `moba`."""
    if not causal:
        raise ValueError("moba is causal only")
    kern = load("_tl_moba")

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        sel = moba_select(q, k, block_size=block_size, topk=topk)
        if density.active():
            density.record_mask(moba_mask(sel, block_size), causal=True)
        return kern.moba_forward(q, k, v, sel, block_size=block_size, block=tile(16, 64))

    warm(run, q, k, v)  # the routing runs too: negligible beside the compile it hoists
    return run
