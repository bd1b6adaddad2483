"""FlexAttention MSA-Conv: real-pixel queries over a zero-padded KV canvas (eager and compiled).

The zero tokens of the canvas reproduce the padding semantics exactly (logit 0, value 0), so
the generic flex backends (same-length Q/KV) do not apply; these are staged: canvas mask build
(+ compile) is setup, the per-call zero padding of K/V is part of the steady state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from attnbench.impls.msa_conv import SPEC, canvas_mask_mod, grid_of, pad_to_canvas, padding
from attnbench.ops import flex_can_run, flex_runner
from attnbench.registry import register_backend
from attnbench.spec import Backend


def _prepare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, dilation: int,
             spatial: Sequence[int] | None, compiled: bool) -> Callable[..., torch.Tensor]:
    from torch.nn.attention.flex_attention import create_block_mask

    grid = grid_of(q.shape[-2], spatial)
    pad = padding(kernel_size, dilation)
    nk = (grid[0] + 2 * pad) * (grid[1] + 2 * pad)
    block_mask = create_block_mask(canvas_mask_mod(grid, kernel_size, dilation), None, None,
                                   q.shape[-2], nk, device=q.device.type)
    attend = flex_runner(compiled)
    gqa = q.shape[1] != k.shape[1]

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return attend(q, pad_to_canvas(k, grid, pad), pad_to_canvas(v, grid, pad),
                      block_mask=block_mask, enable_gqa=gqa)

    if compiled:
        with torch.no_grad():
            run(q.detach(), k.detach(), v.detach())  # compile now: setup, not steady state
    return run


@register_backend(SPEC, Backend.FLEX, can_run=flex_can_run, staged=True)
def msa_conv_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                  kernel_size: int = 3, dilation: int = 1,
                  spatial: Sequence[int] | None = None) -> Callable[..., Any]:
    return _prepare(q, k, v, kernel_size, dilation, spatial, compiled=False)


@register_backend(SPEC, Backend.FLEX_COMPILED, can_run=flex_can_run, staged=True)
def msa_conv_flex_compiled(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                           kernel_size: int = 3, dilation: int = 1,
                           spatial: Sequence[int] | None = None) -> Callable[..., Any]:
    return _prepare(q, k, v, kernel_size, dilation, spatial, compiled=True)
