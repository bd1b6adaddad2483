"""VAR invariants: keep=1 ⇒ base; rows sum to 1; text non-sink weights unchanged; only image-centric rows
change; the LSE-mass identity matches the materialised masses."""

from __future__ import annotations

import torch

from attnbench import intervene as iv
from attnbench.impls.mha import mha
from attnbench.impls.var import var
from attnbench.kernels.var import var_flex

N = 32


def _qkv(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 2, N, 8, generator=g, dtype=torch.float64) for _ in range(3)]


def _edited_probs(q, k, keep_frac=0.6, **kw):
    """P' recovered by running var on v = identity (one-hot values)."""
    v = torch.eye(N, dtype=torch.float64).expand(1, 2, N, N)
    return var(q, k, v, keep_frac=keep_frac, **kw)


def test_keep_one_is_base():
    q, k, v = _qkv()
    for causal in (False, True):
        torch.testing.assert_close(var(q, k, v, causal=causal, keep_frac=1.0), mha(q, k, v, causal=causal))


def test_rows_sum_to_one_and_text_untouched():
    q, k, _ = _qkv()
    p = iv.probs(q, k, False, {"base": "mha", "base_params": {}})
    p2 = _edited_probs(q, k, sinks=[0, 20])  # one image sink, one text sink
    torch.testing.assert_close(p2.sum(-1), torch.ones_like(p2.sum(-1)))
    text_non_sink = [j for j in range(N // 4, N) if j != 20]
    torch.testing.assert_close(p2[..., text_non_sink], p[..., text_non_sink])
    assert not torch.allclose(p2, p)  # random inputs do select rows at the defaults
    changed = (p2 - p).abs().amax(-1) > 1e-12
    m_vis = p[..., : N // 4].sum(-1)
    assert bool((m_vis[changed] >= 0.2).all())  # only image-centric rows change
    torch.testing.assert_close(p2[..., [0, 20]][changed], 0.6 * p[..., [0, 20]][changed])


def test_flex_matches_reference_with_a_text_sink():
    q, k, v = _qkv(1)
    for causal in (False, True):
        kw = dict(causal=causal, sinks=[0, 3, 17], rho=0.3)
        torch.testing.assert_close(var_flex(q.float(), k.float(), v.float(), **kw), var(q, k, v, **kw).float(),
                                   atol=2e-5, rtol=1e-4)


def test_detects_the_planted_sink_of_a_massive_activation_dimension():
    from attnbench.impls.var import detect_sinks, massive_dims

    g = torch.Generator().manual_seed(3)
    h = torch.randn(2, 12, 32, generator=g)
    h[0, 5, 7] = 200.0  # a massive activation in dimension 7: token 5 of the first sequence
    h[1, 9, 7] = -150.0  # and token 9 of the second
    sinks = detect_sinks(h, tau=20.0)
    want = torch.zeros(2, 12, dtype=torch.bool)
    want[0, 5] = want[1, 9] = True
    assert torch.equal(sinks, want)
    assert massive_dims(h, 1) == [7]
    assert torch.equal(detect_sinks(h, 20.0, dims=[7]), want)
    assert not bool(detect_sinks(h, 20.0, dims=[0, 1]).any())  # the massive channel is not among these
    assert not bool(detect_sinks(torch.randn(2, 12, 32, generator=g), 20.0).any())  # no massive activation


def test_per_sequence_sink_mask_matches_indices_and_flex():
    q, k, v = (torch.cat([x, x.flip(2)]) for x in _qkv(2))  # batch of 2
    mask = torch.zeros(2, N, dtype=torch.bool)
    mask[0, 3] = mask[1, 5] = True
    out = var(q, k, v, sinks=mask, rho=0.3)
    torch.testing.assert_close(out[:1], var(q[:1], k[:1], v[:1], sinks=[3], rho=0.3))
    torch.testing.assert_close(out[1:], var(q[1:], k[1:], v[1:], sinks=[5], rho=0.3))
    for causal in (False, True):
        got = var_flex(q.float(), k.float(), v.float(), causal=causal, sinks=mask, rho=0.3)
        torch.testing.assert_close(got, var(q, k, v, causal=causal, sinks=mask, rho=0.3).float(), atol=2e-5, rtol=1e-4)
