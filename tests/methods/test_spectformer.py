"""SpectFormer spectral gating invariants (spec card methods-efficient §11)."""

from __future__ import annotations

import math

import pytest
import torch

import attnbench.kernels.spectformer  # noqa: F401  (registers spectformer and its FFT step)
from attnbench.impls.spectformer import SPEC, spectformer_flops, spectformer_layout, spectformer_mixers
from attnbench.layers import build_layer
from attnbench.proxy.train import ModelConfig, ProxyModel
from attnbench.spec import Workload

C = 8


def _layer(backend: str, spatial: tuple[int, int]):
    torch.manual_seed(0)
    return build_layer("spectformer", backend, C, 2, spatial=spatial).double()


def _x(spatial: tuple[int, int]) -> torch.Tensor:
    n = spatial[0] * spatial[1]
    return torch.randn(2, n, C, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


GRIDS = [(4, 6), (5, 7), (3, 8)]  # even and odd b (Nyquist column or not)


@pytest.mark.parametrize("spatial", GRIDS)
def test_fft_matches_dft_reference(spatial: tuple[int, int]) -> None:
    x = _x(spatial)
    torch.testing.assert_close(_layer("native", spatial)(x), _layer("reference", spatial)(x))


@pytest.mark.parametrize("backend", ["reference", "native"])
@pytest.mark.parametrize("spatial", GRIDS)
def test_unit_filter_is_identity(backend: str, spatial: tuple[int, int]) -> None:
    layer, x = _layer(backend, spatial), _x(spatial)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[..., 0] = 1.0
    torch.testing.assert_close(layer(x), x)


@pytest.mark.parametrize("spatial", GRIDS)
def test_is_circular_conv_with_irfft2_of_filter_and_roll_equivariant(spatial: tuple[int, int]) -> None:
    layer, x = _layer("reference", spatial), _x(spatial)
    a, b = spatial
    kernel = torch.fft.irfft2(layer.filter.detach(), s=(a, b), dim=(0, 1))  # [a, b, C], backward norm
    xg = x.unflatten(1, (a, b))
    conv = sum(torch.roll(xg, (m, n), dims=(1, 2)) * kernel[m, n] for m in range(a) for n in range(b))
    torch.testing.assert_close(layer(x), conv.flatten(1, 2))
    rolled = torch.roll(xg, (1, 2), dims=(1, 2)).flatten(1, 2)
    want = torch.roll(layer(x).unflatten(1, (a, b)), (1, 2), dims=(1, 2)).flatten(1, 2)
    torch.testing.assert_close(layer(rolled), want)


def test_adapt_flops_and_hybrid_helper() -> None:
    w = SPEC.shape(Workload(batch=2, heads_q=2, heads_kv=2, seq_q=24, seq_kv=24, head_dim=4), {})
    assert w.spatial == (4, 6)
    flops = spectformer_flops(w, SPEC.params()).useful
    assert flops == pytest.approx(2 * (5 * 24 * math.log2(24) * 8 + 6 * 4 * 4 * 8))
    mixers = spectformer_mixers(5, C, 2, spatial=(4, 6), alpha=2)
    assert [type(m).__name__ for m in mixers] == ["SpectralGating"] * 2 + ["AttentionLayer"] * 3
    x = _x((4, 6)).float()
    for m in mixers:
        x = x + m(x)
    assert x.shape == (2, 24, C)


def test_layout_is_alpha_spectral_then_attention() -> None:
    assert spectformer_layout(12, SPEC.params()) == ("spectformer",) * 4 + ("mha",) * 8  # paper: 4 of 12
    assert spectformer_layout(2, SPEC.params()) == ("spectformer", "mha")
    assert spectformer_layout(3, {"alpha": 3}) == ("spectformer",) * 3  # all-spectral (GFNet-like)
    with pytest.raises(ValueError, match="alpha=5"):
        spectformer_layout(4, {"alpha": 5})


def _vit(method: str, **params) -> ProxyModel:
    torch.manual_seed(0)
    cfg = ModelConfig(method=method, in_dim=3, out_dim=5, d_model=C, n_heads=2, n_layers=3, causal=False,
                      mlp=True, params=params, spatial=(4, 6) if method == "spectformer" else None, max_len=24)
    return ProxyModel(cfg).double()


def test_proxy_model_builds_the_plan_and_alpha_zero_is_the_attention_stack() -> None:
    x = torch.randn(2, 24, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    hybrid = _vit("spectformer")
    assert [type(b.attn).__name__ for b in hybrid.blocks] == ["SpectralGating", "AttentionLayer", "AttentionLayer"]
    torch.testing.assert_close(_vit("spectformer", alpha=0)(x), _vit("mha")(x))
    assert not torch.allclose(hybrid(x), _vit("mha")(x))
