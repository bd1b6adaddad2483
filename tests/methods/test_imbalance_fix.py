"""Fixing-imbalanced invariants: α=β=0 ⇒ base; only the last row changes; top/bottom streams disjoint; the encoder's
CLS scores pick the streams when given; flex agrees with the reference."""

from __future__ import annotations

import pytest
import torch

from attnbench import intervene as iv
from attnbench.impls.imbalance_fix import imbalance_fix, streams
from attnbench.impls.mha import mha
from attnbench.kernels.imbalance_fix import imbalance_fix_flex


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


def test_encoder_stream_scores_choose_the_tokens():
    p = torch.rand(1, 2, 32, dtype=torch.float64).softmax(-1)
    img = iv.img_mask([0, 8], 32)
    cls = torch.linspace(0.1, 0.2, 8, dtype=torch.float64)[None].flip(-1).roll(6, -1)  # top token at 6
    top, bottom, _ = streams(p, img, 0.125, 0.7, True, stream_scores=cls)  # top_frac 1/8 of 8 → 1 token
    assert top[0].nonzero().flatten().tolist() == [6] and float(bottom.sum()) == 0.0
    cls[0, 2] = 5.0  # an outlier (> Q3 + 1.5·IQR): bottom stream, not top
    top, bottom, _ = streams(p, img, 0.125, 0.7, True, stream_scores=cls)
    assert bottom[0].nonzero().flatten().tolist() == [2] and float(top[0, 2]) == 0.0


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("encoder", [False, True])
def test_flex_matches_reference(causal, encoder):
    q, k, v = _qkv(1)
    kw = {"img_span": [0, 8]}
    if encoder:
        kw["stream_scores"] = torch.rand(2, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    want = imbalance_fix(q, k, v, causal=causal, **kw).float()
    got = imbalance_fix_flex(q.float(), k.float(), v.float(), causal=causal, **kw)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
