"""VMoBA invariants (spec card methods-efficient §4b)."""

from __future__ import annotations

import pytest
import torch

from attnbench.impls.vmoba import (
    SPEC,
    THRESHOLD_TYPES,
    chunk_sizes,
    default_grid,
    partition_perm,
    vmoba,
    vmoba_route,
)
from attnbench.ops import dense_attention
from attnbench.registry import METHODS
from attnbench.spec import Workload

B, H, D, GRID = 1, 2, 16, (4, 8, 8)
N = 256


def _qkv(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, N, D, generator=gen, dtype=torch.float64) for _ in range(3))  # type: ignore


def _params(**kw) -> dict:
    return {**SPEC.params({"block": (2, 4, 4), **kw}), "spatial": GRID}


def _route(q, k, **kw):
    p = _params(**kw)
    p.pop("spatial")
    return vmoba_route(q, k, grid=GRID, **p)


@pytest.mark.parametrize("partition", ["1d", "2d", "3d"])
def test_permutation_round_trip_and_contiguous_cubes(partition: str) -> None:
    chunks = chunk_sizes(GRID, partition, (2, 4, 4))
    perm = partition_perm(GRID, chunks)
    x = torch.arange(N)
    assert torch.equal(x[perm][torch.argsort(perm)], x)
    t, h, w = perm // 64, perm // 8 % 8, perm % 8
    bs = chunks[0] * chunks[1] * chunks[2]
    for coord, c in zip((t, h, w), chunks, strict=True):  # every block spans exactly one chunk per axis
        assert (coord.view(-1, bs) // c).unique(dim=1).shape[1] == 1


@pytest.mark.parametrize("kw", [{"threshold": 1.0}, {"select_mode": "topk", "topk": 8}])
def test_full_selection_is_full_attention(kw: dict) -> None:
    q, k, v = _qkv()
    torch.testing.assert_close(vmoba(q, k, v, **_params(**kw)), dense_attention(q, k, v))


def test_one_1d_chunk_is_full_attention() -> None:
    q, k, v = _qkv()
    out = vmoba(q, k, v, **_params(partition="1d", block=(4, 1, 1), threshold=0.01))
    torch.testing.assert_close(out, dense_attention(q, k, v))


@pytest.mark.parametrize("mode", ["topk", "threshold"])
@pytest.mark.parametrize("scope", THRESHOLD_TYPES)
def test_own_block_always_selected(mode: str, scope: str) -> None:
    q, k, _ = _qkv(1)
    _, sel, bs = _route(q, k, select_mode=mode, threshold_type=scope, topk=1, threshold=0.05)
    own = torch.arange(N) // bs
    assert sel[..., torch.arange(N), own].all()


def test_topk_one_is_block_diagonal_in_permuted_order() -> None:
    q, k, v = _qkv(2)
    perm, sel, bs = _route(q, k, select_mode="topk", topk=1, threshold_type="query_head")
    own = torch.arange(N) // bs
    assert torch.equal(sel, (own[:, None] == torch.arange(sel.shape[-1])).expand_as(sel))
    blockdiag = own[:, None] == own[None, :]
    qp, kp, vp = q[:, :, perm], k[:, :, perm], v[:, :, perm]
    want = dense_attention(qp, kp, vp, blockdiag)[:, :, torch.argsort(perm)]
    torch.testing.assert_close(vmoba(q, k, v, **_params(select_mode="topk", topk=1)), want)


def test_global_topk_budget() -> None:
    q, k, _ = _qkv(3)
    _, sel, bs = _route(q, k, select_mode="topk", topk=2, threshold_type="head_global")
    chosen = sel.sum(dim=(-2, -1))
    assert (chosen == 2 * N).all()  # k·N (query, block) entries per head, own blocks among them
    assert sel[..., torch.arange(N), torch.arange(N) // bs].all()


@pytest.mark.parametrize("backend", ["native", "sdpa", "flex"])
@pytest.mark.parametrize("kw", [{}, {"partition": "2d", "select_mode": "topk", "threshold_type": "overall"}])
def test_fused_matches_reference(backend: str, kw: dict) -> None:
    q, k, v = (t.float() for t in _qkv(4))
    p = _params(**kw)
    got = METHODS.get("vmoba").impl(backend).prepare(q, k, v, causal=False, params=p)(q, k, v)
    torch.testing.assert_close(got, vmoba(q, k, v, **p), atol=2e-5, rtol=1e-4)


def test_default_grid_and_adapt() -> None:
    for n in (64, 256, 1000, 1024, 4096):
        t, h, w = default_grid(n)
        assert t * h * w == n
    assert SPEC.shape(Workload(seq_q=1024, seq_kv=1024), SPEC.params()).spatial == (4, 16, 16)


@pytest.mark.parametrize("spatial,block,topk", [((4, 8, 8), (1, 4, 4), 3), ((1, 7, 7), (1, 1, 7), 2)])
def test_topk_density_is_k_of_the_blocks_exactly(spatial, block, topk) -> None:
    from attnbench import density

    n = spatial[0] * spatial[1] * spatial[2]
    q, k, v = (torch.randn(1, 2, n, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    with density.measure() as meter:
        vmoba(q, k, v, partition="3d", block=block, select_mode="topk", topk=topk, spatial=spatial)
    nblk = n // (block[0] * block[1] * block[2])
    assert meter.value == pytest.approx(topk / nblk)


def test_at_density_on_a_patch_grid_where_the_paper_default_is_one_block() -> None:
    from attnbench.impls.vmoba import at_density

    w = Workload(seq_q=49, seq_kv=49, spatial=(7, 7))
    p = at_density(w, 0.25, SPEC.params())
    assert p["select_mode"] == "topk" and p["block"] == [1, 1, 7] and p["topk"] == 2  # 2 of 7 row blocks
