"""MLP variant (spec card methods-modeling A4): no token mixing, parameter-matched, FLOPs."""

from __future__ import annotations

import torch

from attnbench.impls.decon_mlp import SPEC, mlp_flops
from attnbench.layers import build_layer
from attnbench.spec import Workload

C = 48


def _layer(backend: str = "reference"):
    torch.manual_seed(0)
    return build_layer("decon_mlp", backend, C, 4).double()


def test_output_at_i_depends_only_on_x_i() -> None:
    x = torch.randn(2, 10, C, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = x.clone()
    y[:, 3] += 1.0
    a, b = _layer()(x), _layer()(y)
    keep = [i for i in range(10) if i != 3]
    torch.testing.assert_close(a[:, keep], b[:, keep])
    torch.testing.assert_close(_layer("native")(x), a)


def test_parameter_matched_to_attention() -> None:
    n_params = sum(p.numel() for p in _layer().parameters())
    assert n_params == 3 * C * (4 * C // 3) == 4 * C * C


def test_flops() -> None:
    w = Workload(batch=2, heads_q=4, heads_kv=4, seq_q=16, seq_kv=16, head_dim=12)
    assert mlp_flops(w, SPEC.params()).useful == 8 * 2 * 16 * C * C
