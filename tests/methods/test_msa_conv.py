"""Spec-card invariants of TiC / MSA-Conv (methods-efficient.md §9)."""

from __future__ import annotations

import pytest
import torch

from attnbench.impls.msa_conv import SPEC, msa_conv
from attnbench.impls.neighborhood import neighborhood
from attnbench.registry import METHODS
from attnbench.spec import Workload


def qkv(n: int, h: int = 2, hkv: int | None = None, d: int = 8,
        dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, hh, n, d, generator=g, dtype=dtype) for hh in (h, hkv or h, hkv or h)]


def test_k1_gives_v() -> None:
    q, k, v = qkv(80)
    assert torch.allclose(msa_conv(q, k, v, kernel_size=1, spatial=(8, 10)), v)


@pytest.mark.parametrize(("ks", "dil"), [(3, 1), (3, 2), (5, 1)])
def test_interior_equals_na_borders_differ(ks: int, dil: int) -> None:
    h, w = 12, 14
    q, k, v = qkv(h * w)
    o = msa_conv(q, k, v, kernel_size=ks, dilation=dil, spatial=(h, w)).view(1, 2, h, w, 8)
    na = neighborhood(q, k, v, kernel_size=ks, dilation=dil, spatial=(h, w)).view(1, 2, h, w, 8)
    p = dil * (ks - 1) // 2
    assert torch.allclose(o[:, :, p:h - p, p:w - p], na[:, :, p:h - p, p:w - p], atol=1e-6)
    assert not torch.allclose(o[:, :, 0, 0], na[:, :, 0, 0], atol=1e-3)


def test_zero_padding_semantics_at_a_corner() -> None:
    q, k, v = qkv(25, h=1)
    o = msa_conv(q, k, v, kernel_size=3, spatial=(5, 5))
    nbrs = torch.tensor([0, 1, 5, 6])  # in-image part of the corner's 3×3 window; 5 zero slots
    s = q[0, 0, 0] @ k[0, 0, nbrs].T * 8**-0.5
    p = torch.softmax(torch.cat([s, torch.zeros(5)]), 0)[:4]
    assert torch.allclose(o[0, 0, 0], p @ v[0, 0, nbrs], atol=1e-6)


@pytest.mark.parametrize(("ks", "dil"), [(3, 1), (5, 2)])
def test_unfold_equals_flex(ks: int, dil: int) -> None:
    q, k, v = qkv(80, h=4, hkv=2)
    kw = {"kernel_size": ks, "dilation": dil, "spatial": (8, 10)}
    fused = METHODS.get("msa_conv").impl("flex").prepare(q, k, v, causal=False, params=kw)(q, k, v)
    assert torch.allclose(fused, msa_conv(q, k, v, **kw), atol=1e-5)


def test_roll_unroll_identity() -> None:
    x = torch.randn(1, 8, 6, 7)
    shifts = [(1, 2), (-1, 0), (0, -3), (2, 2)]
    groups = x.chunk(4, dim=1)
    rolled = [torch.roll(g, s, dims=(2, 3)) for g, s in zip(groups, shifts, strict=False)]
    back = torch.cat([torch.roll(g, (-s[0], -s[1]), dims=(2, 3))
                      for g, s in zip(rolled, shifts, strict=True)], 1)
    assert torch.equal(back, x)


def test_gradcheck_fp64() -> None:
    q, k, v = (t.requires_grad_() for t in qkv(12, h=1, d=4, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda q, k, v: msa_conv(q, k, v, kernel_size=3, spatial=(3, 4)),
                                    (q, k, v))


def test_checks_and_flops() -> None:
    p = SPEC.params()
    w = SPEC.shape(Workload(seq_q=64, seq_kv=64), p)
    assert w.spatial == (8, 8) and SPEC.why_not(w, p) is None
    not_square = SPEC.shape(Workload(seq_q=60, seq_kv=60), p)
    assert SPEC.why_not(not_square, p) is not None and "square" in SPEC.check(not_square, p)
    assert "odd" in SPEC.why_not(w, SPEC.params({"kernel_size": 4}))
    f = SPEC.flops(w, p)
    assert f.useful == 4.0 * 1 * 4 * 64 * 9 * 64 and f.executed >= f.useful
