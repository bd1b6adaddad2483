"""GIFT invariants: α=0 and g_q=1 ⇒ base; rows sum to 1; image mass non-decreasing in α (with g_q = 1); rows
outside the decode rows untouched; a given saliency is what boosts; flex agrees with the reference."""

from __future__ import annotations

import math

import pytest
import torch

from attnbench import intervene as iv
from attnbench.impls.gift import gift, paper_layers
from attnbench.impls.gift import saliency_of as saliency
from attnbench.impls.mha import mha
from attnbench.kernels.gift import gift_flex

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


def test_rows_outside_the_decode_rows_untouched_and_given_saliency_used():
    q, k, v = _qkv()
    base = mha(q, k, v, causal=True)
    out = gift(q, k, v, causal=True, rows=[-1])
    torch.testing.assert_close(out[:, :, :-1], base[:, :, :-1])  # only the decode row changes
    assert not torch.allclose(out[:, :, -1], base[:, :, -1])
    sal = torch.zeros(2, N, dtype=torch.float64)
    sal[:, 2] = 1.0  # one salient image token
    eye = torch.eye(N, dtype=torch.float64).expand(2, 4, N, N)
    p_new = gift(q, k, eye, causal=True, rows=[-1], saliency=sal, query_gain=1.0)[:, :, -1]
    p_old = iv.probs(q, k, True, {"base": "mha", "base_params": {}})[:, :, -1]
    ratio = p_new / p_old  # gain e^α on token 2 only, renormalised
    torch.testing.assert_close(ratio[..., 2] / ratio[..., 3], torch.full_like(ratio[..., 2], math.exp(5.0)))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kw", [{}, {"rows": [-1]}, {"rows": [-2, -1], "query_gain": 1.5}, {"saliency": "given"}])
def test_flex_matches_reference(causal, kw):
    q, k, v = _qkv(1)
    if kw.get("saliency") == "given":
        kw = {"saliency": torch.rand(2, N, dtype=torch.float64, generator=torch.Generator().manual_seed(0)),
              "rows": [-1]}
    want = gift(q, k, v, causal=causal, **kw).float()
    got = gift_flex(q.float(), k.float(), v.float(), causal=causal, **kw)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_paper_layers_scale_with_depth():
    assert paper_layers(2) == (0, (1, 2))
    assert paper_layers(32) == (11, (12, 23))
    ls, (lo, hi) = paper_layers(4)
    assert ls < lo < hi <= 4
    assert paper_layers(4, 0, [2, 4]) == (0, (2, 4))
