"""SoftPAG invariants: u=0 base, u=1 identity map (output v), linear in u, unselected heads untouched."""

from __future__ import annotations

import torch

from attnbench.impls.mha import mha
from attnbench.impls.softpag import pag_guidance, softpag
from attnbench.kernels.softpag import softpag_sdpa


def _qkv(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, n, 16, generator=g, dtype=torch.float64) for _ in range(3)]


def test_strength_zero_is_base_and_one_is_identity():
    q, k, v = _qkv()
    for causal in (False, True):
        torch.testing.assert_close(softpag(q, k, v, causal=causal, strength=0.0), mha(q, k, v, causal=causal))
        torch.testing.assert_close(softpag(q, k, v, causal=causal, strength=1.0), v)
        torch.testing.assert_close(softpag_sdpa(q, k, v, causal=causal, strength=1.0), v)


def test_linear_in_strength_and_head_selection():
    q, k, v = _qkv()
    o0, o1 = softpag(q, k, v, strength=0.0), softpag(q, k, v, strength=1.0)
    torch.testing.assert_close(softpag(q, k, v, strength=0.3), 0.7 * o0 + 0.3 * o1)
    o = softpag(q, k, v, strength=1.0, heads=[1])
    torch.testing.assert_close(o[:, 1], v[:, 1])
    torch.testing.assert_close(o[:, [0, 2]], o0[:, [0, 2]])


def test_wraps_another_base():
    q, k, v = _qkv()
    from attnbench.impls.sliding_window import sliding_window
    want = sliding_window(q, k, v, causal=True, window=8)
    got = softpag(q, k, v, causal=True, strength=0.0, base="sliding_window", base_params={"window": 8})
    torch.testing.assert_close(got, want)


def test_guidance():
    a, b = torch.ones(3), torch.zeros(3)
    torch.testing.assert_close(pag_guidance(a, b, 0.0), a)
    torch.testing.assert_close(pag_guidance(a, b, 2.0), 3 * a)


def _tiny_model():
    from torch import nn

    from attnbench.layers import build_layer

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.emb = nn.Embedding(10, 16)
            self.attn = nn.ModuleList(build_layer("mha", "reference", 16, 2, causal=True) for _ in range(2))
            self.head = nn.Linear(16, 5)

        def forward(self, x):
            h = self.emb(x)
            for a in self.attn:
                h = h + a(h)
            return self.head(h)

    return Tiny().double().eval()


def test_guided_decoding_w0_and_identity_perturbation_are_base():
    from attnbench import intervene as iv

    m = _tiny_model()
    x = torch.randint(0, 10, (3, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = m(x)
        perturbed = iv.apply_intervention(m, "softpag", {"strength": 1.0})
        torch.testing.assert_close(iv.Guided(m, perturbed, 0.0)(x), base)  # w = 0: the base
        ident = iv.apply_intervention(m, "softpag", {"strength": 0.0})  # the identity perturbation
        for w in (0.5, 1.0, 3.0, 10.0):
            torch.testing.assert_close(iv.Guided(m, ident, w)(x), base)
        p = perturbed(x)
        assert not torch.allclose(p, base)
        torch.testing.assert_close(iv.Guided(m, perturbed, 3.0)(x), pag_guidance(base, p, 3.0))
