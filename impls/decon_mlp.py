"""MLP (no token mixing) — "Deconstructing Attention" (Xue et al., 2025), arXiv 2510.11602. The attention
layer replaced by a parameter-matched gated MLP `FC_dn(SiLU(FC_gt x) · FC_up x)` applied per token."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.impls._deconstructed import PAPER
from attnbench.registry import register_method, step
from attnbench.spec import AttentionSpec, Backend, Capabilities, FlopCount, Params, Workload


def hidden_width(d_model: int, hidden: int) -> int:
    """`hidden`, or (0) the width matching attention's 4·C² parameters: 3·C·h = 4·C² ⇒ h = round(4C/3)."""
    return hidden or round(4 * d_model / 3)


def mlp_flops(w: Workload, params: Params) -> FlopCount:
    """Three `C × h` matmuls per token: `6·B·N·C·h` (= `8·B·N·C²` when parameter-matched)."""
    total = 6.0 * w.batch * w.seq_q * w.d_model * hidden_width(w.d_model, params["hidden"])
    return FlopCount(useful=total, executed=total)


SPEC = AttentionSpec(
    name="decon_mlp",
    title="Deconstructed attention: gated MLP instead of attention",
    paper=PAPER,
    family="deconstructed",
    kind="layer",
    defaults={"hidden": 0},
    capabilities=Capabilities(causal=True, noncausal=True),
    flops=mlp_flops,
    claims=("500M uniform: NLU 40.0, WikiText PPL 993.5 (standard 51.9 / 38.1): mixing is essential.",),
)


def gated_mlp(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor
              ) -> torch.Tensor:
    """Reference `FC_dn(SiLU(FC_gt x) · FC_up x)` on `[B, N, C]`."""
    return F.linear(F.silu(F.linear(x, w_gate)) * F.linear(x, w_up), w_down)


class GatedMLP(nn.Module):
    """Token-wise gated MLP with the attention layer's interface (`causal` has no effect)."""

    def __init__(self, d_model: int, *, backend: Backend | str, hidden: int) -> None:
        super().__init__()
        h = hidden_width(d_model, hidden)
        self.gate = nn.Linear(d_model, h, bias=False)
        self.up = nn.Linear(d_model, h, bias=False)
        self.down = nn.Linear(h, d_model, bias=False)
        backend = Backend(backend)
        self.mlp = gated_mlp if backend == Backend.REFERENCE else step(SPEC, backend)
        self.aux_loss = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x, self.gate.weight, self.up.weight, self.down.weight)


@register_method(SPEC)
def decon_mlp(d_model: int, n_heads: int, *, backend: Backend | str = Backend.REFERENCE, causal: bool = False,
              hidden: int = 0) -> GatedMLP:
    """Build the parameter-matched gated MLP on `x [B, N, C]` (`n_heads`, `causal` are unused)."""
    return GatedMLP(d_model, backend=backend, hidden=hidden)
