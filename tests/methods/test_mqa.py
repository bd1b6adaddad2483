"""MQA invariants (spec card methods-efficient §14): one kv head; equals MHA on repeated kv; KV cache 2·D."""

from __future__ import annotations

import pytest
import torch

from attnbench.impls.mha import mha
from attnbench.impls.mqa import SPEC, mqa
from attnbench.registry import METHODS
from attnbench.spec import Backend, Workload

B, H, N, D = 2, 4, 40, 16


@pytest.mark.parametrize("backend", [Backend.REFERENCE, Backend.SDPA, Backend.FLEX])
@pytest.mark.parametrize("causal", [False, True])
def test_equals_mha_on_repeated_kv(backend: Backend, causal: bool) -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, N, D, generator=g)
    k, v = (torch.randn(B, 1, N, D, generator=g) for _ in range(2))
    out = METHODS.get("mqa").impl(backend).prepare(q, k, v, causal=causal, params={})(q, k, v)
    torch.testing.assert_close(out, mha(q, k.expand(-1, H, -1, -1), v.expand(-1, H, -1, -1), causal=causal))


def test_adapt_and_check() -> None:
    w = Workload(heads_q=8, heads_kv=8)
    assert SPEC.shape(w, {}).heads_kv == 1
    assert SPEC.why_not(SPEC.shape(w, {}), {}) is None
    assert "needs heads_kv=1" in SPEC.why_not(w, {})
    q, k, v = torch.randn(1, 4, 8, 8), torch.randn(1, 2, 8, 8), torch.randn(1, 2, 8, 8)
    with pytest.raises(ValueError, match="expected k/v with 1 heads"):
        mqa(q, k, v)


def test_kv_cache_bytes_are_2_d_per_token() -> None:
    w = SPEC.shape(Workload(batch=2, heads_q=16, seq_q=10, seq_kv=10, head_dim=64), {})
    assert SPEC.kv_cache_bytes(w, {}) == 2 * 1 * 64 * 4 * 2 * 10
