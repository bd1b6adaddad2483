"""RMHA invariants (spec card methods-modeling A1): zero relative params ⇒ MHA, relative-only
position dependence, skew == gather, causality, FLOPs."""

from __future__ import annotations

import pytest
import torch

import attnbench.kernels.rmha as krmha
from attnbench.flops import counted_flops
from attnbench.impls.rmha import SPEC, rel_flops, rel_logits
from attnbench.layers import build_layer
from attnbench.ops import causal_mask, dense_attention
from attnbench.spec import Workload

C, H, N = 32, 4, 24
D = C // H


def _layer(backend: str = "reference", *, causal: bool = True, **params):
    torch.manual_seed(0)
    return build_layer("rmha", backend, C, H, causal=causal, params={"max_len": 64, **params}).double()


def _x(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, N, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rand(*shape: int, seed: int = 2) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("causal", [True, False])
def test_zero_relative_params_is_mha(causal: bool) -> None:
    layer, x = _layer(causal=causal, init_std=0.0), _x()
    heads = lambda t: t.unflatten(-1, (H, D)).transpose(1, 2)  # noqa: E731
    o = dense_attention(heads(layer.q(x)), heads(layer.k(x)), heads(layer.v(x)),
                        causal_mask(N, N) if causal else None)
    torch.testing.assert_close(layer(x), layer.out(o.transpose(1, 2).flatten(2)))


def test_positional_logits_depend_on_offset_only() -> None:
    q = _rand(1, H, 1, D).expand(1, H, N, D)  # same content at every position
    logits = rel_logits(q, _rand(2 * N - 1, H, D, seed=3), _rand(2 * N - 1, H, seed=4))
    torch.testing.assert_close(logits[..., 1:, 1:], logits[..., :-1, :-1])  # shift both positions


def test_skew_view_equals_gather() -> None:
    q, p, b = _rand(2, H, N, D), _rand(2 * N - 1, H, D, seed=3), _rand(2 * N - 1, H, seed=4)
    torch.testing.assert_close(krmha.skew(krmha.offset_logits(q, p, b)), rel_logits(q, p, b))


@pytest.mark.parametrize("rel_kind", ["learned", "sinusoidal"])
def test_causal_output_ignores_the_future(rel_kind: str) -> None:
    layer, x = _layer(rel_kind=rel_kind), _x()
    y = x.clone()
    y[:, 10:] -= 2.0
    torch.testing.assert_close(layer(x)[:, :10], layer(y)[:, :10])


@pytest.mark.parametrize("causal", [True, False])
def test_sinusoidal_sdpa_matches_reference_and_formula(causal: bool) -> None:
    x = _x()
    ref = _layer(causal=causal, rel_kind="sinusoidal")
    torch.testing.assert_close(_layer("sdpa", causal=causal, rel_kind="sinusoidal")(x), ref(x))
    p, b = ref.rel_tables(N)  # canonical form: b = v·W_R R, the second global bias
    torch.testing.assert_close(b, torch.einsum("rhd,hd->rh", p, ref.v_bias))


def test_check_and_flops() -> None:
    w = Workload(batch=1, heads_q=4, heads_kv=4, seq_q=128, seq_kv=128, head_dim=16, causal=True)
    params = SPEC.params({"max_len": 64})
    assert "max_len" in SPEC.why_not(w, params)
    f = rel_flops(w, SPEC.params())
    pairs, proj = 128 * 129 // 2, 8 * 128 * 64 * 64
    assert f.useful == 4 * 4 * pairs * 16 + 2 * 4 * pairs * 16 + proj
    assert f.executed == 4 * 4 * pairs * 16 + 2 * 4 * 128 * 255 * 16 + proj
    sin = rel_flops(w, SPEC.params({"rel_kind": "sinusoidal"}))
    assert sin.useful == f.useful + 2 * 255 * 64 * 64


def test_counted_flops_match_executed() -> None:
    w = Workload(batch=1, heads_q=H, heads_kv=H, seq_q=N, seq_kv=N, head_dim=D)
    layer, x = _layer(causal=False), _x()[:1]
    assert counted_flops(lambda: layer(x)) == rel_flops(w, SPEC.params()).executed
