"""Spec-card invariants of GNA and NATTENSim-lite (methods-efficient.md §2)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnbench.impls.gna import SPEC, gna, natten_sim
from attnbench.impls.neighborhood import na_config, na_mask, neighborhood
from attnbench.kernels.gna import blocked_attention
from attnbench.registry import METHODS
from attnbench.spec import Workload


def qkv(n: int, h: int = 2, hkv: int | None = None, d: int = 8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, hh, n, d, generator=g) for hh in (h, hkv or h, hkv or h)]


def test_stride_1_is_na() -> None:
    q, k, v = qkv(48)
    for causal in (False, True):
        o = gna(q, k, v, causal=causal, kernel_size=(3, 5), stride=1, dilation=(1, 2), spatial=(4, 12))
        assert torch.equal(o, neighborhood(q, k, v, causal=causal, kernel_size=(3, 5), dilation=(1, 2),
                                           spatial=(4, 12)))


def test_stride_k_is_block_diagonal_and_window_partition() -> None:
    n, kk = 48, 8
    cfg = na_config(n, False, {"kernel_size": kk, "stride": kk})
    blocks = torch.arange(n) // kk
    assert torch.equal(na_mask(cfg), blocks[:, None] == blocks[None, :])
    q, k, v = qkv(n)
    want = F.scaled_dot_product_attention(*(t.view(1, 2, n // kk, kk, 8) for t in (q, k, v))).view(1, 2, n, 8)
    assert torch.allclose(gna(q, k, v, kernel_size=kk, stride=kk), want, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_blocked_fast_path_matches_reference_2d_dilated_gqa(causal: bool) -> None:
    spatial, params = (8, 12), {"kernel_size": (4, 3), "stride": (4, 3), "dilation": (1, 2),
                                "is_causal": (False, True)}
    q, k, v = qkv(96, h=4, hkv=2)
    cfg = na_config(96, causal, params, spatial)
    assert torch.allclose(blocked_attention(q, k, v, cfg),
                          gna(q, k, v, causal=causal, spatial=spatial, **params), atol=1e-5)


def test_stride_groups_share_rows() -> None:
    spatial, k, s = (10, 12), (5, 6), (2, 3)
    mask = na_mask(na_config(120, False, {"kernel_size": k, "stride": s}, spatial))
    coords = torch.cartesian_prod(torch.arange(10), torch.arange(12))
    group = (coords[:, 0] // 2) * 100 + coords[:, 1] // 3
    for gid in group.unique():
        rows = mask[group == gid]
        assert (rows == rows[0]).all()
    assert (mask.sum(-1) == 30).all()


def test_every_key_is_attended() -> None:
    for n, k, s, d in [(30, 5, 5, 1), (30, 6, 4, 2), (31, 4, 3, 3)]:
        for causal in (False, True):
            mask = na_mask(na_config(n, False, {"kernel_size": k, "stride": s, "dilation": d,
                                                "is_causal": causal}))
            assert mask.any(0).all()


def test_sim_blocked_tile_equals_window() -> None:
    out = natten_sim((32, 48), (8, 16), (8, 16), q_tile=(8, 16), kv_tile=(8, 16))
    assert out["sim_speedup"] == (32 / 8) * (48 / 16)
    assert out["tiles_partial"] == 0 and out["flops_executed"] == out["flops_useful"]
    one_d = natten_sim((512,), 64, 64, q_tile=64, kv_tile=64)
    assert one_d["sim_speedup"] == 8 and one_d["tiles_partial"] == 0


def test_sim_multi_dim_tiling_beats_flat_tiling_for_2d_blocks() -> None:
    flat = natten_sim((64, 64), 16, 16, q_tile=128, kv_tile=128)
    tiled = natten_sim((64, 64), 16, 16, q_tile=(8, 16), kv_tile=(8, 16))
    assert tiled["sim_speedup"] > flat["sim_speedup"]
    assert tiled["flops_useful"] == flat["flops_useful"]


def test_sim_matches_block_mask_counts() -> None:
    from torch.nn.attention.flex_attention import create_block_mask

    w = Workload(seq_q=512, seq_kv=512)
    params = SPEC.params({"kernel_size": 48, "stride": 16, "dilation": 2})
    sim = natten_sim((512,), 48, 16, 2, q_tile=128, kv_tile=128)
    bm = create_block_mask(SPEC.mask_mod(w, params), None, None, 512, 512, device="cpu")
    partial, full = int(bm.kv_num_blocks.sum()), int(bm.full_kv_num_blocks.sum())
    assert sim["tiles_visited"] == partial + full and sim["tiles_full"] == full


def test_useful_flops_do_not_depend_on_stride() -> None:
    w = Workload(seq_q=1024, seq_kv=1024, spatial=(32, 32))
    f1 = SPEC.flops(w, SPEC.params({"kernel_size": 8, "stride": 1}))
    f8 = SPEC.flops(w, SPEC.params({"kernel_size": 8, "stride": 8}))
    assert f1.useful == f8.useful == 4.0 * 4 * 1024 * 64 * 64
    assert f8.executed <= f1.executed


def test_sdpa_backend_reason_when_not_blocked() -> None:
    entry = METHODS.get("gna")
    why = entry.why_not("sdpa", Workload(seq_q=64, seq_kv=64), SPEC.params({"stride": 4}))
    assert why is not None and "stride == kernel_size" in why
    assert math.isclose(natten_sim((64,), 16, 16, q_tile=16, kv_tile=16)["flop_speedup"], 4.0)


@pytest.mark.parametrize("kernel,stride", [(16, 16), (8, 1), (8, 4)])
def test_at_density_keeps_the_stride_ratio(kernel: int, stride: int) -> None:
    """Blocked GNA stays blocked, NA stays NA, strided stays half-strided, at every target."""
    from attnbench.impls.gna import at_density

    w = Workload(seq_q=128, seq_kv=128, causal=True)
    params = SPEC.params({"kernel_size": kernel, "stride": stride})
    for target in (0.125, 0.5):
        p = at_density(w, target, params)
        assert p["stride"] == max(1, round(p["kernel_size"] * stride / kernel))


def test_recorded_density_on_a_2d_grid_is_the_factorised_count() -> None:
    from attnbench import density

    q = k = v = torch.randn(1, 2, 64, 8)
    with density.measure() as meter:
        gna(q, k, v, kernel_size=4, stride=4, spatial=(8, 8))
    assert meter.value == pytest.approx(16 / 64)  # blocked 4×4: exactly Πk keys per query
