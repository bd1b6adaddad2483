"""Linear-attention invariants (spec card methods-efficient §14): chunk == recurrent == quadratic."""

from __future__ import annotations

import pytest
import torch

from attnbench.impls.linear import SPEC, linear
from attnbench.kernels.linear import linear_chunked, linear_recurrent
from attnbench.ops import causal_mask
from attnbench.spec import Workload

FORMS = [("elu", True), ("identity", False)]


def qkv(nq: int = 40, nk: int = 40, hq: int = 4, hkv: int = 2, d: int = 8, seed: int = 0, grad: bool = False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, hq, nq, d, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, hkv, nk, d, generator=g, dtype=torch.float64) for _ in range(2))
    return tuple(t.requires_grad_(grad) for t in (q, k, v))


@pytest.mark.parametrize(("feature_map", "normalize"), FORMS)
@pytest.mark.parametrize("chunk_size", [1, 7, 16, 64])
def test_chunk_equals_recurrent_equals_quadratic(feature_map: str, normalize: bool, chunk_size: int) -> None:
    q, k, v = qkv()
    quadratic = linear(q, k, v, causal=True, feature_map=feature_map, normalize=normalize)
    recurrent = linear_recurrent(q, k, v, feature_map=feature_map, normalize=normalize)
    chunked = linear_chunked(q, k, v, causal=True, feature_map=feature_map, normalize=normalize,
                             chunk_size=chunk_size)
    torch.testing.assert_close(recurrent, quadratic)
    torch.testing.assert_close(chunked, quadratic)


@pytest.mark.parametrize("causal", [False, True])
def test_identity_without_normalisation_is_masked_qk_v(causal: bool) -> None:
    q, k, v = qkv(hq=2, hkv=2)
    a = q @ k.transpose(-1, -2)
    expected = (a * causal_mask(40, 40) if causal else a) @ v
    for fn in (linear, linear_chunked):
        out = fn(q, k, v, causal=causal, feature_map="identity", normalize=False)
        torch.testing.assert_close(out, expected)


@pytest.mark.parametrize(("nq", "nk", "causal"), [(40, 40, False), (24, 56, False), (24, 56, True)])
def test_chunked_matches_reference_noncausal_and_with_a_kv_prefix(nq: int, nk: int, causal: bool) -> None:
    q, k, v = qkv(nq, nk)
    expected = linear(q, k, v, causal=causal)
    torch.testing.assert_close(linear_chunked(q, k, v, causal=causal, chunk_size=8), expected)


def test_grouped_kv_equals_repeated_kv() -> None:
    q, k, v = qkv(hq=6, hkv=2)
    expected = linear(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), causal=True)
    torch.testing.assert_close(linear(q, k, v, causal=True), expected)
    torch.testing.assert_close(linear_chunked(q, k, v, causal=True, chunk_size=16), expected)


@pytest.mark.parametrize("causal", [False, True])
def test_rows_are_convex_combinations_of_v(causal: bool) -> None:
    q, k, _ = qkv()
    out = linear(q, k, torch.ones_like(k), causal=causal)
    torch.testing.assert_close(out, torch.ones_like(q))


@pytest.mark.parametrize("causal", [False, True])
def test_chunked_grads_match_reference(causal: bool) -> None:
    grads = []
    for fn in (linear, lambda *a, **kw: linear_chunked(*a, chunk_size=16, **kw)):
        q, k, v = qkv(grad=True)
        out = fn(q, k, v, causal=causal)
        grads.append(torch.autograd.grad((out * out).sum(), (q, k, v)))
    for got, ref in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, ref)


def test_flops_and_constant_state() -> None:
    params = SPEC.params()
    w = Workload(batch=2, heads_q=4, heads_kv=4, seq_q=1024, seq_kv=1024, head_dim=32, causal=True)
    assert SPEC.flops(w, params).useful == 4 * 2 * 4 * 1024 * 32 * 32
    assert SPEC.flops(w, params).executed > SPEC.flops(w, params).useful  # intra-chunk blocks
    state = SPEC.kv_cache_bytes(w, params)
    assert state == SPEC.kv_cache_bytes(w.replace(seq_q=8192, seq_kv=8192), params) == 2 * 4 * 32 * 33 * 4


def test_check_explains() -> None:
    w = Workload(seq_q=64, seq_kv=64)
    assert SPEC.why_not(w, SPEC.params()) is None
    assert "unknown feature_map" in SPEC.why_not(w, SPEC.params({"feature_map": "relu"}))
    assert "chunk_size must be" in SPEC.why_not(w, SPEC.params({"chunk_size": 0}))
    assert "seq_q <= seq_kv" in SPEC.why_not(w.replace(seq_q=80, causal=True), SPEC.params())
