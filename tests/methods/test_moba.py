"""MoBA invariants (spec card methods-efficient §4a)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnbench.impls.moba import SPEC, moba, moba_select
from attnbench.ops import dense_attention
from attnbench.registry import METHODS

B, H, N, D, BS = 1, 2, 200, 16, 32  # 7 blocks, the last one short


def _qkv(seed: int = 0, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, N, D, generator=gen, dtype=torch.float64).requires_grad_(grad)
                 for _ in range(3))  # type: ignore[return-value]


def _run(backend: str, q, k, v, **params) -> torch.Tensor:
    impl = METHODS.get("moba").impl(backend)
    return impl.prepare(q, k, v, causal=True, params=SPEC.params(params))(q, k, v)


@pytest.mark.parametrize("backend", ["reference", "native"])
@pytest.mark.parametrize("params", [{"block_size": BS, "topk": 7}, {"block_size": 256, "topk": 3}])
def test_all_blocks_or_one_block_is_causal_sdpa(backend: str, params: dict) -> None:
    q, k, v = _qkv()
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(_run(backend, q, k, v, **params), want)


@pytest.mark.parametrize("backend", ["reference", "native"])
def test_topk_one_is_block_local_causal(backend: str) -> None:
    q, k, v = _qkv()
    blk = torch.arange(N) // BS
    mask = (blk[:, None] == blk[None, :]) & torch.ones(N, N, dtype=torch.bool).tril()
    torch.testing.assert_close(_run(backend, q, k, v, block_size=BS, topk=1), dense_attention(q, k, v, mask))


def test_router_never_selects_future_blocks_and_keeps_own() -> None:
    q, k, _ = _qkv(1)
    sel = moba_select(q, k, block_size=BS, topk=3)
    own = torch.arange(N) // BS
    blocks = torch.arange(sel.shape[-1])
    assert not (sel & (blocks > own[:, None])).any()
    assert sel[..., own[:, None] == blocks].all()  # own block always in
    assert torch.equal(sel.sum(-1), torch.clamp(own + 1, max=3).expand(B, H, N))


@pytest.mark.parametrize("backend", ["native", "sdpa", "flex"])
def test_fused_matches_reference(backend: str) -> None:
    q, k, v = (t.float() for t in _qkv(2))
    want = moba(q, k, v, block_size=BS, topk=3)
    torch.testing.assert_close(_run(backend, q, k, v, block_size=BS, topk=3), want, atol=2e-5, rtol=1e-4)


def test_native_gradients_match_reference() -> None:
    q, k, v = _qkv(3, grad=True)
    g = torch.randn(B, H, N, D, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    ref = torch.autograd.grad(moba(q, k, v, block_size=BS, topk=3), (q, k, v), g)
    got = torch.autograd.grad(_run("native", q, k, v, block_size=BS, topk=3), (q, k, v), g)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b)


def test_flops_sparser_than_causal() -> None:
    from attnbench.flops import block_routing_flops, dense_flops
    from attnbench.spec import Workload

    w = Workload(batch=1, heads_q=2, heads_kv=2, seq_q=512, seq_kv=512, head_dim=D, causal=True)
    f = SPEC.flops(w, SPEC.params({"block_size": 64, "topk": 2}))
    # each query: at most one history block of 64 plus its causal own-block prefix
    bound = 4 * 2 * D * sum(min(i // 64, 1) * 64 + i % 64 + 1 for i in range(512))
    routing = block_routing_flops(w, 64)  # the router is input-dependent work, counted in useful too
    assert f.useful - routing == bound  # random inputs: every query with history picks exactly one block
    assert f.useful < dense_flops(w).useful and f.executed >= f.useful


@pytest.mark.parametrize("block_size,topk", [(BS, 1), (BS, 3), (16, 5)])
def test_attended_pairs_do_not_depend_on_the_input(block_size: int, topk: int) -> None:
    """The router picks which blocks, never how many: the recorded density is the closed-form count."""
    from attnbench import density
    from attnbench.impls.moba import moba_pairs

    want = moba_pairs(N, block_size, topk) / density.allowed_pairs(N, N, True)
    for seed in (0, 1):
        with density.measure() as meter:
            moba(*_qkv(seed), block_size=block_size, topk=topk)
        assert meter.value == pytest.approx(want)


def test_at_density_routes_between_several_blocks() -> None:
    from attnbench.impls.moba import at_density
    from attnbench.spec import Workload

    for n in (64, 256):
        p = at_density(Workload(seq_q=n, seq_kv=n, causal=True), 0.25, SPEC.params())
        assert p["topk"] >= 2 and n // p["block_size"] >= 8  # a router with choices, not a block diagonal
