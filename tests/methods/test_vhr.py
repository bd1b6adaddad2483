"""VHR invariants: α=1 ⇒ base; no image tokens ⇒ VHD = 0, nothing selected; ≤ 50% heads selected;
outliers dropped; the image-free outputs of a second forward decide the heads; SDPA agrees with the
reference."""

from __future__ import annotations

import pytest
import torch

from attnbench.impls.mha import mha
from attnbench.impls.vhr import select_heads, t_vhd, vhd, vhr
from attnbench.kernels.vhr import vhr_sdpa


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


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("second_forward", [False, True])
def test_sdpa_matches_reference(causal, second_forward):
    q, k, v = _qkv(h=4, seed=1)
    kw = {}
    if second_forward:  # head outputs of an image-free forward, as the model-level application passes them
        kw["noimg_last"] = torch.randn(2, 4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    want = vhr(q, k, v, causal=causal, **kw).float()
    got = vhr_sdpa(q.float(), k.float(), v.float(), causal=causal, **{k_: x.float() for k_, x in kw.items()})
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_given_image_free_outputs_decide_the_heads():
    q, k, v = _qkv(h=4)
    base = mha(q, k, v, causal=True)
    same = base[:, :, -1].clone()
    torch.testing.assert_close(vhr(q, k, v, causal=True, noimg_last=same), base)  # VHD 0 everywhere: nothing
    far = same.clone()
    far[:, 2] += 10.0  # head 2 diverges most but is an outlier; head 3 next
    far[:, 3] += 1.0
    out = vhr(q, k, v, causal=True, noimg_last=far, alpha=2.0)
    torch.testing.assert_close(out[:, 3], 2 * base[:, 3])
    torch.testing.assert_close(out[:, [0, 1, 2]], base[:, [0, 1, 2]])
    assert float(t_vhd(torch.ones(3, 2, 4))[0]) == 8.0
