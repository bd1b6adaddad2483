"""Spec-card invariants of neighborhood attention (methods-efficient.md §1)."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F

from attnbench.impls.neighborhood import (
    SPEC,
    axis_masks,
    index_table,
    na_config,
    na_flops,
    na_mask,
    na_mask_mod_of,
    neighborhood,
)
from attnbench.kernels.neighborhood import staged_tiled
from attnbench.registry import METHODS
from attnbench.spec import Workload


def card_allowed(x: int, y: int, n: int, k: int, s: int, d: int, causal: bool) -> bool:
    """The card's per-axis predicate, written literally with Python ints (independent oracle)."""
    if x % d != y % d:
        return False
    xp, yp = x // d, y // d
    np_ = len(range(x % d, n, d))
    if causal:
        leader = min(xp // s * s + s - 1, np_ - 1)
        return yp <= xp and leader - yp < k
    left, right = k // 2, k // 2 + k % 2 - 1
    leader = min(xp // s * s + s // 2, np_ - 1)
    c = min(max(leader, left), np_ - 1 - right)
    return c - left <= yp <= c + right


def qkv(n: int, *, b: int = 1, h: int = 2, hkv: int | None = None, d: int = 8,
        dtype: torch.dtype = torch.float32, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hkv = hkv or h
    return [torch.randn(b, hh, n, d, generator=g, dtype=dtype) for hh in (h, hkv, hkv)]


AXES_1D = [(12, 5, 1, 1), (12, 4, 1, 1), (13, 3, 1, 2), (20, 4, 1, 3), (16, 5, 3, 1), (17, 6, 4, 2)]


@pytest.mark.parametrize(("n", "k", "s", "d"), AXES_1D)
@pytest.mark.parametrize("causal", [False, True])
def test_axis_predicate_matches_card(n: int, k: int, s: int, d: int, causal: bool) -> None:
    cfg = na_config(n, False, {"kernel_size": k, "stride": s, "dilation": d, "is_causal": causal})
    want = torch.tensor([[card_allowed(x, y, n, k, s, d, causal) for y in range(n)] for x in range(n)])
    assert torch.equal(axis_masks(cfg)[0], want)


def test_every_row_has_exactly_prod_k_keys() -> None:
    for spatial, k, d in [((12,), 5, 2), ((9, 10), (3, 4), (2, 1)), ((5, 6, 7), (3, 2, 5), 1)]:
        cfg = na_config(math.prod(spatial), False, {"kernel_size": k, "dilation": d}, spatial)
        assert (na_mask(cfg).sum(-1) == cfg.window).all()


def test_rd_mask_is_and_of_1d_masks() -> None:
    spatial, params = (5, 6, 7), {"kernel_size": (3, 4, 5), "dilation": (1, 1, 1), "stride": (1, 2, 3),
                                 "is_causal": (True, False, False)}
    cfg = na_config(210, False, params, spatial)
    mask = na_mask(cfg)
    coords = torch.cartesian_prod(*[torch.arange(n) for n in spatial])
    want = torch.ones(210, 210, dtype=torch.bool)
    axes = zip(cfg.shape, cfg.kernel, cfg.stride, cfg.dilation, cfg.causal, strict=True)
    for ax, (n, k, s, d, c) in enumerate(axes):
        m1 = torch.tensor([[card_allowed(x, y, n, k, s, d, c) for y in range(n)] for x in range(n)])
        want &= m1[coords[:, ax][:, None], coords[:, ax][None, :]]
    assert torch.equal(mask, want)
    q_idx, kv_idx = torch.arange(210)[:, None], torch.arange(210)[None, :]
    assert torch.equal(na_mask_mod_of(cfg)(0, 0, q_idx, kv_idx), want)  # the flex mask_mod


def test_interior_rows_symmetric_border_rows_shifted() -> None:
    n, k = 20, 5
    mask = na_mask(na_config(n, False, {"kernel_size": k}))
    for x in range(2, n - 2):
        assert mask[x].nonzero().flatten().tolist() == list(range(x - 2, x + 3))
    assert mask[0].nonzero().flatten().tolist() == list(range(0, 5))  # shifted, not truncated
    assert mask[n - 1].nonzero().flatten().tolist() == list(range(n - 5, n))


def test_k_equals_n_is_dense_sdpa() -> None:
    q, k, v = qkv(48)
    assert torch.allclose(neighborhood(q, k, v, kernel_size=48), F.scaled_dot_product_attention(q, k, v),
                          atol=1e-5)
    o2 = neighborhood(q, k, v, kernel_size=(6, 8), spatial=(6, 8))
    assert torch.allclose(o2, F.scaled_dot_product_attention(q, k, v), atol=1e-5)


def test_1d_causal_k_equals_n_is_causal_sdpa() -> None:
    q, k, v = qkv(40)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(neighborhood(q, k, v, causal=True, kernel_size=40), want, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_k1_gives_v(causal: bool) -> None:
    q, k, v = qkv(60)
    assert torch.allclose(neighborhood(q, k, v, causal=causal, kernel_size=1, dilation=(2, 1),
                                       spatial=(6, 10)), v)


def test_dilation_is_na_on_residue_subsequences() -> None:
    n, k, d = 30, 5, 3
    q, k_, v = qkv(n)
    o = neighborhood(q, k_, v, kernel_size=k, dilation=d)
    for g in range(d):
        sub = neighborhood(q[:, :, g::d], k_[:, :, g::d], v[:, :, g::d], kernel_size=k)
        assert torch.allclose(o[:, :, g::d], sub, atol=1e-6)


def test_reference_gradcheck_fp64() -> None:
    q, k, v = (t.requires_grad_() for t in qkv(12, h=1, d=4, dtype=torch.float64))
    assert torch.autograd.gradcheck(
        lambda q, k, v: neighborhood(q, k, v, kernel_size=(3, 2), dilation=(1, 2), spatial=(3, 4)),
        (q, k, v))


@pytest.mark.parametrize("causal", [False, True])
def test_tiled_native_matches_reference_gqa_3d(causal: bool) -> None:
    spatial = (4, 6, 5)
    params = {"kernel_size": (3, 2, 3), "dilation": (1, 2, 1), "is_causal": (False, True, False)}
    q, k, v = qkv(120, h=4, hkv=2)
    fast = staged_tiled(na_config(120, causal, params, spatial), q.device)
    assert torch.allclose(fast(q, k, v), neighborhood(q, k, v, causal=causal, spatial=spatial, **params),
                          atol=1e-5)


def test_native_has_gradients() -> None:
    q, k, v = (t.requires_grad_() for t in qkv(24, dtype=torch.float64))
    fn = staged_tiled(na_config(24, True, {"kernel_size": 5}), q.device)
    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_index_table_lists_the_mask() -> None:
    cfg = na_config(63, True, {"kernel_size": (3, 4), "dilation": (1, 2)}, (7, 9))
    idx, valid = index_table(cfg)
    listed = torch.zeros(63, 63, dtype=torch.bool)
    listed[torch.arange(63)[:, None].expand_as(idx)[valid], idx[valid]] = True
    assert torch.equal(listed, na_mask(cfg))


def test_adapt_and_check_reasons() -> None:
    p = SPEC.params({"dims": 2})
    w = SPEC.shape(Workload(seq_q=4096, seq_kv=4096), p)
    assert w.spatial == (64, 64) and SPEC.why_not(w, p) is None
    w = SPEC.shape(Workload(seq_q=4095, seq_kv=4095), p)
    assert "perfect" in SPEC.why_not(w, p)
    w = SPEC.shape(Workload(seq_q=64, seq_kv=64), SPEC.params({"dims": 3}))
    assert "exceeds" in SPEC.why_not(w, SPEC.params({"dims": 3}))
    assert "seq_q == seq_kv" in SPEC.why_not(Workload(seq_q=64, seq_kv=128), SPEC.params())


def test_flops_from_the_mask() -> None:
    w = Workload(batch=2, heads_q=4, heads_kv=4, seq_q=4096, seq_kv=4096, head_dim=64, spatial=(64, 64))
    f = na_flops(w, SPEC.params({"kernel_size": 7}))
    assert f.useful == 4.0 * 2 * 4 * 4096 * 49 * 64
    assert f.executed is not None and f.executed >= f.useful
    fc = na_flops(w.replace(causal=True), SPEC.params({"kernel_size": 7}))
    assert fc.useful == 4.0 * 2 * 4 * 64 * 64 * 64 * sum(min(x + 1, 7) for x in range(64)) * 7 / 64


@pytest.mark.skipif(importlib.util.find_spec("natten") is None,
                    reason="natten is not installed (pip install --no-build-isolation natten)")
@pytest.mark.parametrize(("spatial", "params", "causal"), [
    ((64,), {"kernel_size": 7, "dilation": 2}, True),
    ((8, 10), {"kernel_size": (3, 4), "dilation": (2, 1), "is_causal": (False, True)}, False),
    ((4, 6, 5), {"kernel_size": 3, "dilation": (1, 2, 1)}, True),
])
def test_natten_peer_equals_reference(spatial: tuple[int, ...], params: dict, causal: bool) -> None:
    entry = METHODS.get("neighborhood")
    n = math.prod(spatial)
    q, k, v = qkv(n, b=2, h=4, hkv=2)
    kw = {**SPEC.params(params), "spatial": spatial}
    w = Workload(batch=2, heads_q=4, heads_kv=2, seq_q=n, seq_kv=n, head_dim=8, causal=causal,
                 spatial=spatial)
    assert entry.why_not("natten", w, SPEC.params(params)) is None
    o = entry.impl("natten").prepare(q, k, v, causal=causal, params=kw)(q, k, v)
    assert torch.allclose(o, neighborhood(q, k, v, causal=causal, **kw), atol=1e-5)


def test_natten_peer_reasons() -> None:
    entry = METHODS.get("neighborhood")
    w = Workload(seq_q=64, seq_kv=64, mode="fwd_bwd")
    assert entry.why_not("natten", w, SPEC.params()) is not None


@pytest.mark.parametrize("spatial", [(7, 7), (4, 4, 4)])
def test_recorded_density_is_prod_kernel_over_n(spatial) -> None:
    """Borders shift inward, so every non-causal query sees exactly Πk keys; at_density picks k."""
    from attnbench import density
    from attnbench.impls.neighborhood import at_density

    n = math.prod(spatial)
    w = Workload(seq_q=n, seq_kv=n, spatial=spatial)
    k = at_density(w, 0.25, SPEC.params())["kernel_size"]
    q = kk = v = torch.randn(1, 1, n, 8)
    with density.measure() as meter:
        neighborhood(q, kk, v, kernel_size=k, spatial=spatial)
    assert meter.value == pytest.approx(k ** len(spatial) / n)
    assert abs(meter.value - 0.25) <= ((k + 1) ** len(spatial) - k ** len(spatial)) / n
