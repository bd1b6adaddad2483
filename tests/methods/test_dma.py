"""DMA invariants (spec card methods-efficient §3)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnbench.flops import core_flops
from attnbench.impls.dma import SPEC, dma, dma_routing
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
    assert f.useful == pytest.approx(core_flops(w, kept))
    assert f.executed >= f.useful
