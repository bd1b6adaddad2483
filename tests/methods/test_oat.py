"""OAT object-distance bias: zero bias ⇒ MHA; the bias is a function of token distance only and
starts as OAT's Gaussian `exp(-d²/2σ²)`; SDPA and flex (score_mod) agree with the reference."""

from __future__ import annotations

import math

import pytest
import torch

from attnbench.impls.oat import SPEC, distance_bias, distances, oat_flops
from attnbench.layers import build_layer
from attnbench.ops import dense_attention
from attnbench.spec import Workload

C, H, GRID = 16, 2, (3, 4)
N = GRID[0] * GRID[1]


def _layer(backend: str = "reference", **params) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_layer("oat", backend, C, H, params=params, spatial=GRID).double()


def _x() -> torch.Tensor:
    return torch.randn(2, N, C, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_zero_bias_is_mha() -> None:
    layer = _layer()
    with torch.no_grad():
        layer.table.zero_()
    torch.manual_seed(0)
    mha = build_layer("mha", "reference", C, H).double()
    with torch.no_grad():  # the same projections: OAT's fused qkv rows are [q | k | v]
        mha.q.weight.copy_(layer.qkv.weight[:C])
        mha.kv.weight.copy_(layer.qkv.weight[C:])
        mha.out.weight.copy_(layer.out.weight)
    x = _x()
    torch.testing.assert_close(layer(x), mha(x))
    with torch.no_grad():
        layer.table.fill_(0.7)  # a constant bias shifts every score equally: still MHA
    torch.testing.assert_close(layer(x), mha(x))


def test_distances_on_grid_and_sequence() -> None:
    d = distances(N, GRID)
    torch.testing.assert_close(d, d.T)
    assert (d.diagonal() == 0).all()
    assert d[0, 1] == 1 and d[0, GRID[1]] == 1 and math.isclose(float(d[0, GRID[1] + 1]), math.sqrt(2))
    assert math.isclose(float(d[0, N - 1]), math.hypot(GRID[0] - 1, GRID[1] - 1))
    seq = distances(5, None)
    assert seq[0].tolist() == [0, 1, 2, 3, 4]


def test_bias_starts_as_oats_gaussian_and_depends_on_distance_only() -> None:
    layer = _layer(sigma=2.0, init_scale=1.5)
    b = layer.bias(N)  # [H, N, N]
    d = distances(N, GRID)
    for dist in (0.0, 1.0, 2.0, 3.0):  # knots are 0.5 apart: exact there
        sel = d == dist
        torch.testing.assert_close(b[:, sel], torch.full_like(b[:, sel], 1.5 * math.exp(-dist ** 2 / 8)))
    for dist in d.unique():  # every pair at one distance gets one bias per head
        vals = b[:, d == dist]
        torch.testing.assert_close(vals, vals[:, :1].expand_as(vals))
    assert (b[0, 0, 1:] <= b[0, 0, 0]).all()  # decays away from the token itself


def test_interpolation_is_linear_between_knots_and_flat_beyond() -> None:
    table = torch.tensor([[0.0, 2.0, 4.0]], dtype=torch.float64)
    dist = torch.tensor([[0.25, 0.75, 5.0]], dtype=torch.float64)
    torch.testing.assert_close(distance_bias(table, dist, 0.5), torch.tensor([[[1.0, 3.0, 4.0]]], dtype=torch.float64))


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_fused_matches_reference(backend: str) -> None:
    ref, fused = _layer(), _layer(backend)
    with torch.no_grad():
        ref.table.normal_()
        fused.table.copy_(ref.table)
    x = _x()
    if backend == "flex":  # no flex backward on CPU: forward only
        with torch.no_grad():
            torch.testing.assert_close(fused(x), ref(x))
        return
    xr, xf = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ref(xr).square().sum().backward()
    fused(xf).square().sum().backward()
    torch.testing.assert_close(xf.grad, xr.grad)
    torch.testing.assert_close(fused.table.grad, ref.table.grad)  # the bias trains through the fused path


def test_reference_is_dense_attention_plus_bias() -> None:
    layer, x = _layer(), _x()
    q, k, v = layer.qkv(x).view(2, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
    want = layer.out(dense_attention(q, k, v, bias=layer.bias(N)[None]).transpose(1, 2).reshape(2, N, C))
    torch.testing.assert_close(layer(x), want)


def test_flops_and_spec() -> None:
    w = Workload(batch=2, heads_q=H, heads_kv=H, seq_q=N, seq_kv=N, head_dim=C // H)
    f = oat_flops(w, SPEC.params())
    assert f.useful == 2 * (4 * H * N * N * (C // H)) + 2 * 2 * N * C * 4 * C + 2 * H * N * N
    assert SPEC.family == "positional" and not SPEC.capabilities.causal
    with pytest.raises(ValueError, match="bidirectional"):
        build_layer("oat", "reference", C, H, causal=True)
