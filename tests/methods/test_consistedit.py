"""ConsistEdit invariants: strength 0 ⇒ base; text tokens never edited; no edit region and equal text ⇒
the target reproduces the source on vision rows; edited region keeps the target's V."""

from __future__ import annotations

import pytest
import torch

from attnbench.impls.consistedit import consistedit, edit_qkv
from attnbench.impls.mha import mha


def _qkv(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 2, 32, 8, generator=g, dtype=torch.float64) for _ in range(3)]


def test_strength_zero_is_base_and_odd_batch_refused():
    q, k, v = _qkv()
    torch.testing.assert_close(consistedit(q, k, v, strength=0.0), mha(q, k, v))
    with pytest.raises(ValueError):
        consistedit(q[:1], k[:1], v[:1])


def test_text_untouched_and_edit_region_keeps_target_v():
    q, k, v = _qkv()
    q2, k2, v2 = edit_qkv(q, k, v, 1.0, True, None, None)
    torch.testing.assert_close(q2[:, :, 8:], q[:, :, 8:])  # text (after the first quarter) never edited
    torch.testing.assert_close(q2[1, :, :8], q[0, :, :8])  # Q/K copied on all vision tokens (structure on)
    torch.testing.assert_close(v2[1, :, 4:8], v[1, :, 4:8])  # edited region: target V
    torch.testing.assert_close(v2[1, :, :4], v[0, :, :4])  # elsewhere: source V
    q3, _, _ = edit_qkv(q, k, v, 1.0, False, None, None)
    torch.testing.assert_close(q3[1, :, 4:8], q[1, :, 4:8])  # structure off: edited region keeps target Q


def test_no_edit_region_reconstructs_source():
    q, k, v = _qkv()
    for x in (q, k, v):
        x[1, :, 8:] = x[0, :, 8:]  # same text tokens in both branches
    out = consistedit(q, k, v, edit_span=[0, 0])
    torch.testing.assert_close(out[1], out[0])
