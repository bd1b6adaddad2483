"""In-Context Brush invariants: λ=γ=0 ⇒ base; non-target rows unchanged; γ alone rescales target rows."""

from __future__ import annotations

import torch

from attnbench.impls.brush import brush
from attnbench.impls.mha import mha


def _qkv(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 32, 8, generator=g, dtype=torch.float64) for _ in range(3)]


def test_neutral_is_base_and_non_target_rows_unchanged():
    q, k, v = _qkv()
    for causal in (False, True):
        base = mha(q, k, v, causal=causal)
        torch.testing.assert_close(brush(q, k, v, causal=causal, lam=0.0, gamma=0.0), base)
        out = brush(q, k, v, causal=causal)
        torch.testing.assert_close(out[:, :, :16], base[:, :, :16])
        assert not torch.allclose(out[:, :, 16:], base[:, :, 16:])


def test_reweighting_scales_target_rows_per_head():
    q, k, v = _qkv()
    base, out = mha(q, k, v), brush(q, k, v, lam=0.0, gamma=0.2)
    ratio = out[:, :, 16:] / base[:, :, 16:]
    per_head = ratio.flatten(2)
    torch.testing.assert_close(per_head, per_head[..., :1].expand_as(per_head))
    assert float(per_head.min()) >= 1.0 - 1e-12 and float(per_head.max()) <= 1.2 + 1e-12
