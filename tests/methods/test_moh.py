"""MoH invariants (spec card methods-modeling A2)."""

from __future__ import annotations

import pytest
import torch

import attnbench.kernels.moh  # noqa: F401  (registers moh and its sdpa/native steps)
from attnbench.flops import counted_flops
from attnbench.impls.moh import SPEC, load_balance_loss, moh_flops
from attnbench.layers import build_layer
from attnbench.ops import causal_mask, dense_attention
from attnbench.spec import Workload

C, H, N = 32, 8, 40


def _layer(backend: str = "reference", *, causal: bool = False, **params):
    torch.manual_seed(0)
    return build_layer("moh", backend, C, H, causal=causal, params=params).double()


def _x(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, N, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("backend", ["sdpa", "native"])
@pytest.mark.parametrize("causal", [False, True])
def test_backends_match_reference_fwd_and_grad(backend: str, causal: bool) -> None:
    x = _x().requires_grad_()
    outs, grads = [], []
    for b in ("reference", backend):
        layer = _layer(b, causal=causal, active_ratio=0.5, shared_ratio=0.25)
        y = layer(x)
        outs.append(y)
        leaves = [x, layer.qkv.weight, layer.router.weight]
        grads.append(torch.autograd.grad((y * y).sum() + layer.aux_loss, leaves))
    torch.testing.assert_close(outs[1], outs[0])
    for g1, g0 in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(g1, g0)


@pytest.mark.parametrize("shared_ratio", [0.0, 0.5])
@pytest.mark.parametrize("backend", ["reference", "native"])
def test_all_heads_active_zero_routers_is_mha(shared_ratio: float, backend: str) -> None:
    layer, x = _layer(backend, causal=True, active_ratio=1.0, shared_ratio=shared_ratio), _x()
    with torch.no_grad():
        for r in (layer.router, layer.shared_router, layer.mix):
            if r is not None:
                r.weight.zero_()
    q, k, v = layer.qkv(x).view(2, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
    want = layer.out(dense_attention(q, k, v, causal_mask(N, N)).transpose(1, 2).flatten(2))
    torch.testing.assert_close(layer(x), want)


def test_routed_gates_sum_to_k_and_unselected_are_zero() -> None:
    layer, x = _layer(active_ratio=0.75, shared_ratio=0.25), _x()  # h_s = 2, k = 4 of H_r = 6
    g, p, m = layer.gates(x)
    assert (layer.h_s, layer.k_active) == (2, 4)
    assert torch.equal(m.sum(-1), torch.full_like(m[..., 0], 4))
    pm = p * m
    g_r = 4 * pm / pm.sum(-1, keepdim=True)
    torch.testing.assert_close(g_r.sum(-1), torch.full_like(g_r[..., 0], 4.0))
    assert torch.all(g[..., 2:][m == 0] == 0)
    q, k, v = layer.qkv(x).view(2, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
    o = layer.attend(q, k, v, g.double(), n_shared=2)  # reference step: skipped rows are exactly 0
    assert torch.all(o.transpose(1, 2)[..., 2:, :][m == 0] == 0)


def test_load_balance_uniform_is_k_and_collapse_is_h_r() -> None:
    h_r, k, tokens = 6, 2, 12
    uniform = torch.full((tokens, h_r), 1 / h_r)
    balanced = torch.zeros(tokens, h_r)
    for t in range(tokens):  # every head picked by the same number of tokens
        balanced[t, [(2 * t) % h_r, (2 * t + 1) % h_r]] = 1
    assert load_balance_loss(uniform, balanced).item() == pytest.approx(k)
    collapsed = torch.zeros(tokens, h_r)
    collapsed[:, :k] = 1
    assert load_balance_loss(collapsed / k, collapsed).item() == pytest.approx(h_r)


def test_zero_router_aux_loss_is_k() -> None:
    layer, x = _layer(active_ratio=0.75, shared_ratio=0.25), _x()
    with torch.no_grad():
        layer.router.weight.zero_()
    layer(x)
    assert layer.balance_loss.item() == pytest.approx(layer.k_active)
    assert layer.aux_loss.item() == pytest.approx(0.01 * layer.k_active)


def test_native_flops_match_theoretical_formula() -> None:
    params = SPEC.params({"active_ratio": 0.5, "shared_ratio": 0.25})
    w = Workload(batch=1, heads_q=H, heads_kv=H, seq_q=N, seq_kv=N, head_dim=C // H)
    torch.manual_seed(0)
    layer = build_layer("moh", "native", C, H, params=params)
    counted = counted_flops(lambda: layer(torch.randn(1, N, C)))
    assert counted == pytest.approx(moh_flops(w, params).useful, rel=1e-9)


def test_impossible_split_is_reported() -> None:
    w = Workload(heads_q=4, heads_kv=4)
    assert SPEC.why_not(w, SPEC.params({"active_ratio": 0.5, "shared_ratio": 0.5})) is not None
    assert SPEC.why_not(w, SPEC.params({"active_ratio": 0.5, "shared_ratio": 0.25})) is None
