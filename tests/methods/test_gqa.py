"""GQA invariants (spec card methods-efficient §14): equals MHA on repeated kv heads; KV cache 2·H_kv·D."""

from __future__ import annotations

import pytest
import torch

from attnbench.flops import dense_flops
from attnbench.impls.gqa import SPEC, gqa
from attnbench.impls.mha import mha
from attnbench.ops import dense_kv_cache_bytes as mha_kv_cache_bytes
from attnbench.registry import METHODS
from attnbench.spec import Backend, Workload

B, HQ, N, D = 2, 8, 48, 16


def qkv(groups: int, *, dtype: torch.dtype = torch.float32, nq: int = N, nk: int = N, grad: bool = False):
    g = torch.Generator().manual_seed(groups)
    q = torch.randn(B, HQ, nq, D, generator=g, dtype=dtype)
    k, v = (torch.randn(B, HQ // groups, nk, D, generator=g, dtype=dtype) for _ in range(2))
    return tuple(t.requires_grad_(grad) for t in (q, k, v))


def run(backend: Backend, q, k, v, *, causal: bool, groups: int) -> torch.Tensor:
    impl = METHODS.get("gqa").impl(backend)
    return impl.prepare(q, k, v, causal=causal, params={"groups": groups})(q, k, v)


@pytest.mark.parametrize("backend", [Backend.REFERENCE, Backend.SDPA, Backend.FLEX])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("groups", [2, 8])
def test_equals_mha_on_repeated_kv(backend: Backend, causal: bool, groups: int) -> None:
    q, k, v = qkv(groups)
    expected = mha(q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1), causal=causal)
    torch.testing.assert_close(run(backend, q, k, v, causal=causal, groups=groups), expected)


def test_bottom_right_causal_with_a_kv_prefix() -> None:
    q, k, v = qkv(4, nq=16, nk=40)
    expected = mha(q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1), causal=True)
    torch.testing.assert_close(gqa(q, k, v, causal=True, groups=4), expected)
    torch.testing.assert_close(run(Backend.FLEX, q, k, v, causal=True, groups=4), expected)


def test_sdpa_grads_match_reference() -> None:
    grads = []
    for backend in (Backend.REFERENCE, Backend.SDPA):
        q, k, v = qkv(4, dtype=torch.float64, grad=True)
        out = run(backend, q, k, v, causal=True, groups=4)
        grads.append(torch.autograd.grad((out * out).sum(), (q, k, v)))
    for got, ref in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, ref)


def test_adapt_sets_kv_heads_and_check_explains() -> None:
    w = Workload(heads_q=8, heads_kv=8, seq_q=N, seq_kv=N, head_dim=D)
    assert SPEC.shape(w, SPEC.params()).heads_kv == 2
    assert SPEC.shape(w, SPEC.params({"groups": 8})).heads_kv == 1
    assert SPEC.why_not(SPEC.shape(w, SPEC.params()), SPEC.params()) is None
    odd = w.replace(heads_q=6, heads_kv=6)
    params = SPEC.params({"groups": 4})
    assert SPEC.shape(odd, params) == odd  # adapt never raises; check gives the reason
    assert "heads_q=6 is not divisible by groups=4" in SPEC.why_not(SPEC.shape(odd, params), params)
    assert "positive integer" in SPEC.why_not(w, SPEC.params({"groups": 0}))


def test_reference_rejects_mismatched_kv_heads() -> None:
    q, k, v = qkv(2)
    with pytest.raises(ValueError, match="expected k/v with 2 heads"):
        gqa(q, k, v, groups=4)


def test_kv_cache_bytes_are_2_hkv_d_per_token() -> None:
    w = SPEC.shape(Workload(batch=3, heads_q=8, heads_kv=8, seq_q=100, seq_kv=100, head_dim=64,
                            dtype="bfloat16"), SPEC.params())
    assert SPEC.kv_cache_bytes(w, SPEC.params()) == 2 * w.heads_kv * w.head_dim * 2 * w.batch * w.seq_kv
    mha_w = w.replace(heads_kv=w.heads_q)
    assert SPEC.kv_cache_bytes(w, SPEC.params()) * 4 == mha_kv_cache_bytes(mha_w, {})


def test_flops_equal_mha() -> None:
    w = SPEC.shape(Workload(heads_q=8, heads_kv=8, seq_q=64, seq_kv=64, causal=True), SPEC.params())
    assert SPEC.flops(w, SPEC.params()) == dense_flops(w.replace(heads_kv=8))
