"""MEDUSA multi-scale spatial gating (methods-modeling card A9): gating, not attention; gate ≡ 1 is the
identity; each scale's gate is constant on its s×s cells; native == reference; FLOPs."""

from __future__ import annotations

import pytest
import torch

import attnbench.kernels.medusa  # noqa: F401  (registers the native step)
from attnbench.flops import counted_flops
from attnbench.impls.medusa import SPEC, gate_features, medusa_flops
from attnbench.kernels.medusa import gate_features_native
from attnbench.layers import build_layer
from attnbench.spec import Workload

C = 12


def _layer(backend: str = "reference", grid: tuple[int, int] = (5, 7), **params):
    torch.manual_seed(0)
    return build_layer("medusa", backend, C, 2, params=params, spatial=grid).double()


def _x(grid: tuple[int, int] = (5, 7), seed: int = 1) -> torch.Tensor:
    return torch.randn(2, grid[0] * grid[1], C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("grid", [(4, 4), (5, 7), (1, 9)])
def test_native_matches_reference_with_grads(grid: tuple[int, int]) -> None:
    ref, fused = _layer(grid=grid), _layer("native", grid=grid)
    x1 = _x(grid).requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    y1, y2 = ref(x1), fused(x2)
    torch.testing.assert_close(y2, y1)
    y1.square().sum().backward()
    y2.square().sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad)
    torch.testing.assert_close(fused.enc1.weight.grad, ref.enc1.weight.grad)


@pytest.mark.parametrize("backend", ["reference", "native"])
def test_gate_one_is_the_identity(backend: str) -> None:
    layer, x = _layer(backend), _x()
    with torch.no_grad():
        for head in layer.heads:
            head.weight.zero_()
            head.bias.fill_(40.0)  # σ(40) rounds to 1 in float64
    assert torch.equal(layer(x), x)
    assert not torch.equal(_layer(backend)(x), x)  # a trained-from-scratch gate is not the identity


@pytest.mark.parametrize("step", [gate_features, gate_features_native])
def test_each_scale_gates_whole_cells(step) -> None:
    x = torch.ones(1, 3, 6, 8, dtype=torch.float64)
    logit = torch.randn(1, 3, 2, 2, dtype=torch.float64)  # scale 4 on a 6×8 grid (ceil)
    gate = step(x, [logit], (4,))
    for i, j in [(0, 0), (3, 5), (5, 7)]:
        assert gate[0, 0, i, j] == torch.sigmoid(logit[0, 0, i // 4, j // 4])


def test_gating_not_attention_and_no_causal_form() -> None:
    assert SPEC.family == "gating" and "not attention" in SPEC.title
    w = Workload(batch=1, heads_q=2, heads_kv=2, seq_q=64, seq_kv=64, head_dim=8, causal=True)
    assert SPEC.why_not(SPEC.shape(w, SPEC.params()), SPEC.params()) is not None
    assert SPEC.shape(w, SPEC.params()).spatial == (8, 8)


def test_flops_formula_matches_counter() -> None:
    params = SPEC.params()
    w = Workload(batch=2, heads_q=2, heads_kv=2, seq_q=35, seq_kv=35, head_dim=C // 2, spatial=(5, 7))
    torch.manual_seed(0)
    layer = build_layer("medusa", "reference", C, 2, params=params, spatial=(5, 7))
    counted = counted_flops(lambda: layer(torch.randn(2, 35, C)))
    # the counter sees the convolutions, not the gate mean and product ((S+1)·N·C per image)
    assert counted == pytest.approx(medusa_flops(w, params).useful - 2 * 4 * 35 * C)
