"""DCAL invariants (spec card methods-modeling A6): R = 100% ⇒ GLCA == SA, PWCA with the same image
⇒ SA, rollout rows sum to 1, fused == reference with an accumulated rollout, FLOPs."""

from __future__ import annotations

import pytest
import torch

import attnbench.kernels.dcal  # noqa: F401  (registers the SDPA step)
from attnbench.impls.dcal import SPEC, attention_rollout, dcal_flops, n_local
from attnbench.layers import build_layer
from attnbench.ops import dense_attention
from attnbench.spec import Workload

C, H, N = 32, 4, 30


def _layer(backend: str = "reference", **params):
    torch.manual_seed(0)
    return build_layer("dcal", backend, C, H, params=params).double()


def _x(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, N, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _self_attention(layer, x: torch.Tensor) -> torch.Tensor:
    q, k, v = layer._qkv(x)
    return layer.out(dense_attention(q, k, v).transpose(1, 2).flatten(2))


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_all_tokens_local_is_self_attention(backend: str) -> None:
    layer, x = _layer(backend, r_ratio=1.0), _x()
    torch.testing.assert_close(layer(x), _self_attention(layer, x))


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_pwca_with_itself_is_self_attention(backend: str) -> None:
    layer, x = _layer(backend, branch="pwca"), _x()
    layer.pair = x  # duplicated keys leave the per-key weights unchanged
    torch.testing.assert_close(layer(x), _self_attention(layer, x))


def test_glca_updates_only_r_rows() -> None:
    out = _layer(r_ratio=0.2)(_x())
    assert ((out.abs().sum(-1) > 0).sum(-1) == n_local(N, 0.2)).all()


def test_rollout_rows_sum_to_one() -> None:
    probs = [torch.softmax(torch.randn(2, H, N, N, dtype=torch.float64), -1) for _ in range(3)]
    torch.testing.assert_close(attention_rollout(probs).sum(-1), torch.ones(2, N, dtype=torch.float64))


def test_sdpa_matches_reference_with_prior_rollout() -> None:
    x = _x()
    prior = attention_rollout([torch.softmax(torch.randn(2, H, N, N, dtype=torch.float64), -1)])
    ref, fused = _layer(r_ratio=0.3), _layer("sdpa", r_ratio=0.3)
    ref.prior_rollout = fused.prior_rollout = prior
    torch.testing.assert_close(fused(x), ref(x))


def test_flops_and_no_causal_form() -> None:
    w = Workload(batch=1, heads_q=4, heads_kv=4, seq_q=100, seq_kv=100, head_dim=8)
    c2 = 32 * 32
    glca = 4 * 4 * 10 * 100 * 8 + 2 * 4 * 100 * 8 + 6 * 100 * c2 + 2 * 10 * c2
    assert dcal_flops(w, SPEC.params()).useful == glca
    assert dcal_flops(w, SPEC.params({"branch": "pwca"})).useful == 4 * 4 * 100 * 200 * 8 + 14 * 100 * c2
    assert SPEC.why_not(w.replace(causal=True), SPEC.params()) is not None
