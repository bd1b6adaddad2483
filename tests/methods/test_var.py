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
