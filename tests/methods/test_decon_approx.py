"""Approximate (Taylor) variant (spec card methods-modeling A4): ≈ softmax for small scores,
linear-time form == quadratic form across chunks, FLOPs."""

from __future__ import annotations

import pytest
import torch

import attnbench.kernels.decon_approx as kapprox
from attnbench.flops import causal_pairs
from attnbench.impls.decon_approx import SPEC, approx_flops, decon_approx
from attnbench.impls.mha import mha
from attnbench.spec import Workload


def _qkv(n: int = 150, scale: float = 1.0, hkv: int = 2):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, n, 8, generator=g, dtype=torch.float64) * scale
    k = torch.randn(1, hkv, n, 8, generator=g, dtype=torch.float64) * scale
    return q, k, torch.randn(1, hkv, n, 8, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("causal", [True, False])
def test_close_to_softmax_for_small_scores(causal: bool) -> None:
    q, k, v = _qkv(scale=0.05)  # |s| ≈ 1e-3: the Taylor error is O(s³)
    torch.testing.assert_close(decon_approx(q, k, v, causal=causal), mha(q, k, v, causal=causal),
                               atol=1e-7, rtol=0)
    q, k, v = _qkv(scale=1.5)
    assert (decon_approx(q, k, v) - mha(q, k, v)).abs().max() > 1e-2  # and it is an approximation


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("hkv", [1, 2])
def test_linear_time_form_matches_quadratic(causal: bool, hkv: int) -> None:
    q, k, v = _qkv(n=kapprox.CHUNK * 2 + 22, hkv=hkv)  # several chunks and a padded tail
    torch.testing.assert_close(kapprox.decon_approx_native(q, k, v, causal=causal),
                               decon_approx(q, k, v, causal=causal))


def test_feature_map_reproduces_the_polynomial() -> None:
    q, k, _ = _qkv(n=5)
    s = q @ k.transpose(-1, -2) / 8**0.5
    phi = kapprox.taylor_features
    torch.testing.assert_close(phi(q) @ phi(k).transpose(-1, -2), 1 + s + s * s / 2)


def test_flops() -> None:
    w = Workload(batch=1, heads_q=2, heads_kv=2, seq_q=64, seq_kv=64, head_dim=8, causal=True)
    f = approx_flops(w, SPEC.params())
    assert f.useful == 4 * 2 * causal_pairs(64, 64) * 8
    assert f.softmax == 8 * 2 * causal_pairs(64, 64)
