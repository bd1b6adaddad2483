"""Fixing-imbalanced invariants: α=β=0 ⇒ base; only the last row changes; top/bottom streams disjoint."""

from __future__ import annotations

import torch

from attnbench import intervene as iv
from attnbench.impls.imbalance_fix import imbalance_fix, streams
from attnbench.impls.mha import mha


def _qkv(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 2, 32, 8, generator=g, dtype=torch.float64) for _ in range(3)]


def test_zero_strength_is_base():
    q, k, v = _qkv()
    for causal in (False, True):
        torch.testing.assert_close(imbalance_fix(q, k, v, causal=causal, alpha=0.0, beta=0.0),
                                   mha(q, k, v, causal=causal))


def test_only_last_row_changes_and_image_mass_grows():
    q, k, v = _qkv()
    out, base = imbalance_fix(q, k, v, causal=True), mha(q, k, v, causal=True)
    torch.testing.assert_close(out[:, :, :-1], base[:, :, :-1])
    assert not torch.allclose(out[:, :, -1], base[:, :, -1])
    eye = torch.eye(32, dtype=torch.float64).expand(2, 2, 32, 32)
    p_new = imbalance_fix(q, k, eye, causal=True, beta=0.0)[:, :, -1]
    p_old = iv.probs(q, k, True, {"base": "mha", "base_params": {}})[:, :, -1]
    # logits rise only where s_j > 0 (PAI's |s| rule), so the selected positive-logit mass grows
    top, _, _ = streams(p_old, iv.img_mask(None, 32), 0.25, 0.7, True)
    assert bool(((p_new * top[:, None]).sum(-1) >= (p_old * top[:, None]).sum(-1) - 1e-12).any())


def test_streams_disjoint_and_sized():
    p = torch.rand(2, 3, 40, dtype=torch.float64).softmax(-1)
    img = iv.img_mask([0, 20], 40)
    top, bottom, a_h = streams(p, img, 0.25, 0.7, True)
    assert float((top * bottom).sum()) == 0.0
    assert bool((top[:, 20:] == 0).all()) and bool((top.sum(-1) <= 5).all())
    assert float(a_h.max()) <= 0.7 + 1e-12 and float(a_h.min()) >= 0.0
