"""Generic FlexAttention backends (eager and compiled) for every method with `mask_mod`/`score_mod`.

The block mask is built once per (method, workload, params) and cached; compiled flex compiles
per shape deliberately. Both are staged: `prepare` does mask build + compile (+ one warm call),
so that cost is recorded as setup time and never enters the steady-state latency.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from attnbench.ops import flex_can_run, flex_runner, workload_of
from attnbench.registry import Impl, register_generic_backend
from attnbench.spec import AttentionSpec, Backend, Params, Workload


def block_mask_for(spec: AttentionSpec, w: Workload, params: Params) -> Any:
    """`BlockMask` of the spec's `mask_mod` for `w` (None when the method is unmasked)."""
    from torch.nn.attention.flex_attention import create_block_mask

    mask_mod = spec.mask_mod(w, params) if spec.mask_mod else None
    if mask_mod is None:
        return None
    return create_block_mask(mask_mod, None, None, w.seq_q, w.seq_kv, device=w.device)


def _make(spec: AttentionSpec, compiled: bool) -> Callable[..., Callable[..., torch.Tensor]]:
    def prepare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                **params: Any) -> Callable[..., torch.Tensor]:
        w = workload_of(q, k, causal, params)
        block_mask = block_mask_for(spec, w, params)
        score_mod = spec.score_mod(w, params) if spec.score_mod else None
        gqa = q.shape[1] != k.shape[1]
        attend = flex_runner(compiled)

        def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return attend(q, k, v, score_mod=score_mod, block_mask=block_mask, enable_gqa=gqa)

        if compiled:
            with torch.no_grad():
                run(q.detach(), k.detach(), v.detach())  # compile now: setup, not steady state
        return run

    return prepare


def _applies(spec: AttentionSpec) -> bool:
    return spec.kind == "functional" and (spec.mask_mod is not None or spec.score_mod is not None)


for _backend, _compiled in ((Backend.FLEX, False), (Backend.FLEX_COMPILED, True)):
    register_generic_backend(
        _backend, _applies,
        lambda spec, _b=_backend, _c=_compiled: Impl(spec.name, _b, _make(spec, _c), flex_can_run, True))
