"""GIFT invariants: α=0 and g_q=1 ⇒ base; rows sum to 1; image mass non-decreasing in α (with g_q = 1)."""

from __future__ import annotations

import torch

from attnbench.impls.gift import gift, saliency
from attnbench.impls.mha import mha

N = 32


def _qkv(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 4, N, 8, generator=g, dtype=torch.float64) for _ in range(3)]


def test_neutral_is_base():
    q, k, v = _qkv()
    for causal in (False, True):
        torch.testing.assert_close(gift(q, k, v, causal=causal, alpha=0.0), mha(q, k, v, causal=causal))
        torch.testing.assert_close(gift(q, k, v, causal=causal, alpha=0.0, query_gain=1.0),
                                   mha(q, k, v, causal=causal))


def test_rows_sum_and_image_mass_monotone():
    q, k, _ = _qkv()
    eye = torch.eye(N, dtype=torch.float64).expand(2, 4, N, N)
    masses = []
    for a in (0.0, 1.0, 5.0):
        p = gift(q, k, eye, causal=True, alpha=a, query_gain=1.0)
        torch.testing.assert_close(p.sum(-1), torch.ones_like(p.sum(-1)))
        masses.append(p[..., : N // 4].sum(-1))
    assert bool((masses[1] >= masses[0] - 1e-12).all()) and bool((masses[2] >= masses[1] - 1e-12).all())


def test_saliency_range_and_off_image_zero():
    p = torch.rand(2, 4, 9, N, dtype=torch.float64).softmax(-1)
    img = torch.zeros(N, dtype=torch.bool)
    img[:8] = True
    s = saliency(p, img, 0.5)
    assert float(s[:, 8:].abs().max()) == 0.0
    assert float(s.min()) >= 0.0 and float(s.max()) <= 1.0 + 1e-12
