"""Native step of the deconstructed MLP: gate and up projections as one GEMM."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnbench.impls.decon_mlp import SPEC
from attnbench.registry import register_backend
from attnbench.spec import Backend


@register_backend(SPEC, Backend.NATIVE)
def decon_mlp_native(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor
                     ) -> torch.Tensor:
    """`[B, N, C]` → `[B, N, C]`; one `C × 2h` matmul for gate and up, then SiLU-gate and down."""
    gate, up = F.linear(x, torch.cat([w_gate, w_up])).chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, w_down)
