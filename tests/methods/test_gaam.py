"""GAAM invariants (spec card methods-modeling A3): large c ⇒ uniform weights / identity, heads
independent, position-permutation commutes along a non-normalised axis, native == reference, IF, FLOPs."""

from __future__ import annotations

import pytest
import torch

import attnbench.kernels.gaam  # noqa: F401  (registers the native step)
from attnbench.impls.gaam import SPEC, VARIANTS, gaam_flops, importance_factor
from attnbench.layers import build_layer
from attnbench.spec import Workload

C, H, N = 32, 4, 20


def _layer(backend: str = "reference", **params):
    torch.manual_seed(0)
    layer = build_layer("gaam", backend, C, H, params=params).double()
    with torch.no_grad():  # move off the symmetric init so every parameter matters
        for p in layer.parameters():
            p.add_(torch.rand(p.shape, generator=torch.Generator().manual_seed(3), dtype=p.dtype) * 0.5)
    return layer


def _x(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, N, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("variant", ["v1_mixture_norm", "product_norm"])
@pytest.mark.parametrize(("axis", "size"), [("seq", N), ("channel", C // H)])
def test_huge_variance_gives_uniform_weights(variant: str, axis: str, size: int) -> None:
    layer = _layer(variant=variant, norm_axis=axis)
    with torch.no_grad():
        layer.c.fill_(1e6)
    torch.testing.assert_close(layer.density(_x()), torch.full((2, N, C), 1.0 / size, dtype=torch.float64))


def test_huge_variance_unnormalised_is_identity() -> None:
    layer, x = _layer(variant="daam_unnorm"), _x()
    with torch.no_grad():
        layer.c.fill_(1e12)
    torch.testing.assert_close(layer(x), x)


@pytest.mark.parametrize("variant", VARIANTS)
def test_heads_are_independent(variant: str) -> None:
    layer, x = _layer(variant=variant), _x()
    y = x.clone()
    y[..., : C // H] *= 3.0  # change head 0's chunk only
    assert layer(x).shape == x.shape
    torch.testing.assert_close(layer(x)[..., C // H:], layer(y)[..., C // H:])


def test_permuting_positions_commutes_along_the_channel_axis() -> None:
    layer, x = _layer(norm_axis="channel"), _x()
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(layer(x[:, perm]), layer(x)[:, perm])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("axis", ["seq", "channel"])
def test_native_matches_reference(variant: str, axis: str) -> None:
    x = _x()
    torch.testing.assert_close(_layer("native", variant=variant, norm_axis=axis)(x),
                               _layer(variant=variant, norm_axis=axis)(x))


def test_importance_factor_spans_unit_interval() -> None:
    imp = importance_factor(_layer().density(_x()).mean((0, 1)))
    assert imp.min() == 0 and imp.max() == 1


def test_causal_needs_channel_axis_and_flops() -> None:
    w = Workload(batch=2, heads_q=4, heads_kv=4, seq_q=64, seq_kv=64, head_dim=8, causal=True)
    assert SPEC.why_not(w, SPEC.params()) is not None
    assert SPEC.why_not(w, SPEC.params({"norm_axis": "channel"})) is None
    assert gaam_flops(w, SPEC.params()).useful == 2 * 64 * 32 * (4 + 7 * 4 + 3)
    longer = w.replace(seq_q=128, seq_kv=128)
    assert gaam_flops(longer, SPEC.params()).useful == 2 * gaam_flops(w, SPEC.params()).useful
