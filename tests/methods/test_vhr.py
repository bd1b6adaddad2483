"""VHR invariants: α=1 ⇒ base; no image tokens ⇒ VHD = 0, nothing selected; ≤ 50% heads selected;
outliers dropped."""

from __future__ import annotations

import torch

from attnbench.impls.mha import mha
from attnbench.impls.vhr import select_heads, vhd, vhr


def _qkv(h=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, h, 32, 8, generator=g, dtype=torch.float64) for _ in range(3)]


def test_alpha_one_is_base_and_empty_image_selects_nothing():
    q, k, v = _qkv()
    base = mha(q, k, v, causal=True)
    torch.testing.assert_close(vhr(q, k, v, causal=True, alpha=1.0), base)
    torch.testing.assert_close(vhr(q, k, v, causal=True, alpha=3.0, img_span=[0, 0]), base)
    assert float(vhd(base[:, :, -1], base[:, :, -1]).abs().max()) == 0.0


def test_selection_at_most_half_and_scaled_heads():
    for h in (2, 3, 4, 8):
        sel = select_heads(torch.rand(16, h, dtype=torch.float64))
        assert bool((sel.sum(-1) <= h // 2).all())
    q, k, v = _qkv(h=4)
    base, out = mha(q, k, v), vhr(q, k, v, alpha=2.0)
    ratio = (out / base).flatten(2)
    scaled = (ratio - 2.0).abs().amax(-1) < 1e-9
    kept = (ratio - 1.0).abs().amax(-1) < 1e-9
    assert bool((scaled | kept).all()) and bool(scaled.any())


def test_outlier_dropped():
    score = torch.tensor([[0.1, 0.2, 0.3, 0.25, 5.0]], dtype=torch.float64)
    assert select_heads(score).tolist() == [[False, False, True, False, False]]
