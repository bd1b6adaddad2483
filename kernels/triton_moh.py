"""Triton backend of the MoH attention step: per-token head skipping inside the kernel.

Where `native` gathers each routed head's tokens with torch indexing (one SDPA call per head and
batch), this kernel launches once: programs past a head's active-token count exit at once, so only
selected (token, head) tiles are computed. Forward only (the proxies train MoH on `native`).
"""

from __future__ import annotations

import torch

from attnbench.impls.moh import SPEC
from attnbench.kernels._triton_util import load, tile, triton_can_run
from attnbench.registry import register_backend
from attnbench.spec import Backend, Params, Workload


def moh_triton_can_run(w: Workload, params: Params) -> str | None:
    return triton_can_run(w)


@register_backend(SPEC, Backend.TRITON, can_run=moh_triton_can_run)
def gated_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: torch.Tensor, *,
                           causal: bool = False, n_shared: int = 0) -> torch.Tensor:
    """Same contract as `gated_attention`: q, k, v `[B, H, N, D]`, gates `[B, N, H]` → `[B, H, N, D]`.

    Shared heads have dense gates, so they take the same path with a full active list.
    """
    if q.shape[-2] != k.shape[-2]:
        raise ValueError("moh: the triton step is self-attention (Nq == Nk)")
    return load("_tl_moh").moh_forward(q, k, v, gates, causal=causal, block=tile(16, 64))
