"""ConsistEdit invariants: strength 0 ⇒ base; text tokens never edited; no edit region and equal text ⇒
the target reproduces the source on vision rows; edited region keeps the target's V; the edit mask follows
the edit token's text→vision attention; an odd batch runs as pairs; SDPA agrees with the reference."""

from __future__ import annotations

import pytest
import torch

from attnbench.impls.consistedit import consistedit, edit_qkv, mask_from_attention
from attnbench.impls.mha import mha
from attnbench.kernels.consistedit import consistedit_sdpa


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


def test_edit_mask_from_text_to_vision_attention():
    q, k, v = _qkv()
    q[1, :, -1] = 0.0
    q[1, :, -1, 0] = 8.0  # the target's edit token (the last) looks at the vision keys 2 and 5
    k[1, :, :, 0] = -1.0
    k[1, :, [2, 5], 0] = 1.0
    p = torch.softmax(q[1:] @ k[1:].transpose(-1, -2) / 8 ** 0.5, -1)[:, :, [-1]]
    img = torch.zeros(32, dtype=torch.bool)
    img[:8] = True
    m = mask_from_attention(p, img, 0.5)
    assert m.shape == (1, 32) and m[0].nonzero().flatten().tolist() == [2, 5]
    q2, k2, v2 = edit_qkv(q, k, v, 1.0, True, None, m)
    torch.testing.assert_close(v2[1, :, [2, 5]], v[1, :, [2, 5]])  # edited region: target V
    torch.testing.assert_close(v2[1, :, [0, 1, 3, 4, 6, 7]], v[0, :, [0, 1, 3, 4, 6, 7]])  # elsewhere: source


def test_odd_batch_runs_as_pairs():
    from attnbench.impls.consistedit import SPEC
    from attnbench.spec import Workload

    w = Workload(batch=1, heads_q=2, seq_q=32, seq_kv=32, head_dim=8)
    shaped = SPEC.shape(w, SPEC.params())
    assert shaped.batch == 2 and SPEC.why_not(shaped, SPEC.params()) is None


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kw", [{}, {"edit_tokens": [-3, -1], "mask_threshold": 0.3}, {"edit_span": [4, 8]},
                                {"qk_structure": False, "strength": 0.5}])
def test_sdpa_matches_reference(causal, kw):
    q, k, v = _qkv(1)
    want = consistedit(q, k, v, causal=causal, **kw).float()
    got = consistedit_sdpa(q.float(), k.float(), v.float(), causal=causal, **kw)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
