"""DMA invariants (spec card methods-efficient §3)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnbench.flops import core_flops
from attnbench.impls.dma import SPEC, dma, dma_routing, routing_flops
from attnbench.registry import METHODS
from attnbench.spec import Workload

B, HQ, HKV, N, D = 1, 4, 2, 96, 16


def _qkv(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(B, HQ, N, D, generator=gen), torch.randn(B, HKV, N, D, generator=gen),
            torch.randn(B, HKV, N, D, generator=gen))


def _run(backend: str, q, k, v, **params) -> torch.Tensor:
    impl = METHODS.get("dma").impl(backend)
    return impl.prepare(q, k, v, causal=True, params=SPEC.params(params))(q, k, v)


@pytest.mark.parametrize("backend", ["reference", "flex"])
def test_full_window_and_zero_a_is_causal_sdpa(backend: str) -> None:
    q, k, v = _qkv()
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(_run(backend, q, k, v, window=N, a=0.0), want, atol=2e-5, rtol=1e-4)


def test_rows_keep_min_w_visible_and_bias_is_per_key() -> None:
    _, _, v = _qkv()
    w = 20
    bias, keep = dma_routing(v, N, window=w, a=1.0, seed=0)
    assert bias.shape == (B, HKV, 1, N)  # one value per key: same for every query of every grouped head
    visible = torch.arange(N) + 1
    assert torch.equal(keep.sum(-1), torch.minimum(visible, torch.tensor(w)).expand(B, HKV, N))
    # per-query top-w: the kept keys are the w highest-bias visible keys
    row = N - 1
    top = bias[0, 0, 0].topk(w).indices
    assert torch.equal(keep[0, 0, row].nonzero().flatten(), top.sort().values)


def test_shared_selection_is_one_set_per_head() -> None:
    _, _, v = _qkv()
    w = 20
    _, keep = dma_routing(v, N, window=w, a=1.0, seed=0, shared_selection=True)
    assert keep[..., -1, :].sum(-1).eq(w).all()
    assert (keep.sum(-1) <= w).all() and keep[..., 0, :].sum() < w  # early rows keep fewer than w
    shared = keep[..., -1:, :]  # the last row sees every key: it holds the shared set
    assert torch.equal(keep, shared & torch.ones(N, N, dtype=torch.bool).tril())


@pytest.mark.parametrize("params", [{"window": 24}, {"window": 24, "shared_selection": True},
                                    {"window": 24, "exp_bias": True, "a": 0.5}])
def test_flex_matches_reference(params: dict) -> None:
    q, k, v = _qkv(1)
    torch.testing.assert_close(_run("flex", q, k, v, **params), dma(q, k, v, **SPEC.params(params)),
                               atol=2e-5, rtol=1e-4)


def test_bias_changes_output_and_gradients_flow() -> None:
    q, k, v = (t.requires_grad_() for t in _qkv(2))
    out = dma(q, k, v, window=N)
    assert not torch.allclose(out, dma(q, k, v, window=N, a=0.0))
    out.sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))


def test_flops_count_kept_pairs() -> None:
    w = Workload(batch=1, heads_q=HQ, heads_kv=HKV, seq_q=256, seq_kv=256, head_dim=D, causal=True)
    params = SPEC.params({"window": 32})
    kept = sum(min(32, i + 1) for i in range(256))
    f = SPEC.flops(w, params)
    routing = routing_flops(w, params)  # dt projection + top-w: inside the call, so inside the FLOPs
    assert routing > 2 * 256 * HKV * D * HKV
    assert f.useful == pytest.approx(core_flops(w, kept) + routing)
    assert f.executed >= f.useful


def test_recorded_density_is_the_causal_window_count_whatever_the_routing_weights() -> None:
    """A query keeps min(w, visible) keys: the count (and at_density's window) is the causal
    sliding window's, for the seeded fallback and for any learned W_dt alike."""
    from attnbench import density
    from attnbench.impls.dma import at_density

    n, hkv, d = 48, 2, 8
    window = at_density(Workload(seq_q=n, seq_kv=n, causal=True), 0.25, SPEC.params())["window"]
    want = density.window_pairs(n, window, True) / density.allowed_pairs(n, n, True)
    assert abs(want - 0.25) <= n / density.allowed_pairs(n, n, True)
    q, k, v = (torch.randn(1, hkv, n, d, generator=torch.Generator().manual_seed(i)) for i in range(3))
    for w_dt in (None, torch.randn(hkv * d, hkv)):
        kw = {} if w_dt is None else {"dt_weight": w_dt}
        with density.measure() as meter:
            dma(q, k, v, window=window, **kw)
        assert meter.value == pytest.approx(want)


def test_layer_routing_parameters_receive_gradients() -> None:
    """DMALayer (the proxies' form) owns W_dt and A: a backward reaches both, so the mask learns."""
    from attnbench.impls.dma import DMALayer
    from attnbench.spec import Backend

    torch.manual_seed(0)
    layer = DMALayer(METHODS.get("dma"), Backend.REFERENCE, 32, 4, kv_heads=2, causal=True,
                     params={"window": 8})
    names = {n for n, _ in layer.named_parameters()}
    assert {"dt_proj", "A"} <= names and layer.dt_proj.shape == (2 * 8, 2) and layer.A.shape == (2,)
    x = torch.randn(2, 24, 32)
    layer(x).square().sum().backward()
    for p in (layer.dt_proj, layer.A):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    with torch.no_grad():  # the learned weights change the selection: the mask is theirs, not a seed's
        before = layer(x)
        layer.dt_proj.mul_(-1.0)
        assert not torch.allclose(before, layer(x))


def test_learned_weights_reach_the_flex_backend() -> None:
    q, k, v = _qkv(4)
    w_dt = torch.randn(HKV * D, HKV)
    a = torch.tensor([0.5, 2.0])
    p = {**SPEC.params({"window": 24}), "dt_weight": w_dt, "a": a}
    want = dma(q, k, v, **p)
    got = METHODS.get("dma").impl("flex").prepare(q, k, v, causal=True, params=p)(q, k, v)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    assert not torch.allclose(want, dma(q, k, v, **SPEC.params({"window": 24})))  # not the seeded fallback


def test_proxies_build_the_trainable_layer() -> None:
    from attnbench.impls.dma import DMALayer
    from attnbench.layers import build_layer

    layer = build_layer("dma", "reference", 32, 4, kv_heads=2, causal=True, params={"window": 8})
    assert isinstance(layer, DMALayer) and layer.dt_proj.requires_grad and layer.A.requires_grad
