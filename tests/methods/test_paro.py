"""PARO invariants (spec card methods-efficient §5)."""

from __future__ import annotations

import pytest
import torch

from attnbench.impls.paro import (
    AXIS_PERMUTATIONS,
    SPEC,
    axis_orders,
    fake_quant,
    n_kept_blocks,
    paro,
    paro_error,
    paro_plan,
)
from attnbench.ops import dense_attention
from attnbench.registry import METHODS

B, H, D, GRID, BLOCK = 1, 2, 16, (4, 8, 8), 32
N = 256


def _qkv(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, N, D, generator=gen) for _ in range(3))  # type: ignore[return-value]


def _run(backend: str, q, k, v, **kw) -> torch.Tensor:
    p = {**SPEC.params({"block": BLOCK, **kw}), "spatial": GRID}
    return METHODS.get("paro").impl(backend).prepare(q, k, v, causal=False, params=p)(q, k, v)


@pytest.mark.parametrize("backend", ["reference", "native", "flex"])
def test_density_one_without_quant_is_exact(backend: str) -> None:
    q, k, v = _qkv()
    want = dense_attention(q, k, v)
    torch.testing.assert_close(_run(backend, q, k, v, density=1.0), want, atol=2e-6, rtol=1e-5)


def test_six_orders_are_permutations_with_inverse() -> None:
    orders = axis_orders(GRID)
    assert orders.shape == (6, N) and len(AXIS_PERMUTATIONS) == 6
    assert len({tuple(o.tolist()) for o in orders}) == 6
    x = torch.randn(N)
    for o in orders:
        assert torch.equal(x[o][torch.argsort(o)], x)


@pytest.mark.parametrize("density", [0.25, 0.3, 0.5])
def test_realised_density_equals_configured(density: float) -> None:
    q, k, _ = _qkv(1)
    _, mblk = paro_plan(q, k, grid=GRID, block=BLOCK, density=density, coverage=0.9)
    nb = N // BLOCK
    assert mblk.shape == (H, nb, nb)
    assert (mblk.sum(dim=(-2, -1)) == round(density * nb * nb)).all()
    assert mblk.any(-1).all()  # every block row keeps at least one block
    assert n_kept_blocks(nb, density) == round(density * nb * nb)


def test_calibration_makes_a_strided_pattern_block_local() -> None:
    """Tokens attend to tokens with the same w coordinate: the chosen order puts W outermost."""
    w_coord = torch.arange(N) % GRID[2]
    emb = torch.nn.functional.one_hot(w_coord, D).float() * 8.0
    q = k = emb.expand(B, H, N, D)
    perm, _ = paro_plan(q, k, grid=GRID, block=BLOCK, density=0.25, coverage=0.9)
    w_first = [o for o, p in zip(axis_orders(GRID), AXIS_PERMUTATIONS, strict=True) if p[0] == 2]
    assert all(any(torch.equal(ph, o) for o in w_first) for ph in perm)


def test_fake_quant_error_shrinks_with_bits() -> None:
    x = torch.randn(64, 16)
    e4, e8 = ((fake_quant(x, b, 32) - x).abs().max() for b in (4, 8))
    assert e8 < e4 < x.abs().max() / 7
    assert torch.equal(fake_quant(x, 0, 32), x)


def test_int8_error_below_int4_error() -> None:
    q, k, v = _qkv(2)
    p = {"block": BLOCK, "density": 1.0}
    e8 = paro_error(q, k, v, {**p, "qk_bits": 8, "pv_bits": 8}, spatial=GRID)
    e4 = paro_error(q, k, v, {**p, "qk_bits": 8, "pv_bits": 4}, spatial=GRID)
    assert e8["rel_err_sparse"] < 1e-5 and e8["density"] == 1.0
    assert e8["rel_err"] < e4["rel_err"]


@pytest.mark.parametrize("bits", [(0, 0), (8, 0), (8, 8), (8, 4)])
def test_native_fake_quant_path_matches_reference(bits: tuple[int, int]) -> None:
    q, k, v = _qkv(3)
    kw = {"qk_bits": bits[0], "pv_bits": bits[1]}
    want = paro(q, k, v, **SPEC.params({"block": BLOCK, **kw}), spatial=GRID)
    torch.testing.assert_close(_run("native", q, k, v, **kw), want, atol=2e-5, rtol=1e-4)
    if not bits[1]:
        torch.testing.assert_close(_run("flex", q, k, v, **kw), want, atol=2e-5, rtol=1e-4)


def test_flex_refuses_p_quantisation_with_a_reason() -> None:
    from attnbench.spec import Workload

    why = METHODS.get("paro").why_not("flex", Workload(seq_q=N, seq_kv=N), SPEC.params({"pv_bits": 4}))
    assert why and "P" in why


def test_evaluated_on_an_input_other_than_its_calibration_batch() -> None:
    """The plan is frozen from the `calib_seed` batch: it does not follow the evaluated input
    (a strided input would re-order itself W-first if calibrated on itself), and it changes with
    the calibration seed only."""
    from attnbench.impls.paro import frozen_plan

    w_coord = torch.arange(N) % GRID[2]
    q = k = (torch.nn.functional.one_hot(w_coord, D).float() * 8.0).expand(B, H, N, D).contiguous()
    v = torch.randn(B, H, N, D)
    oracle_perm, _ = paro_plan(q, k, grid=GRID, block=BLOCK, density=0.25, coverage=0.9)
    kw = dict(block=BLOCK, density=0.25, coverage=0.9, spatial=GRID)
    perm, mblk = frozen_plan(q, calib_seed=1234, **kw)
    assert not torch.equal(perm, oracle_perm)
    q2, k2, _ = _qkv(7)
    assert all(torch.equal(a, b) for a, b in zip(frozen_plan(q2, calib_seed=1234, **kw), (perm, mblk), strict=True))
    assert not torch.equal(frozen_plan(q, calib_seed=99, **kw)[1], mblk)
    from attnbench.impls.paro import permute_heads, sparse_quant_attention

    qp, kp, vp = (permute_heads(t, perm) for t in (q, k, v))
    want = permute_heads(sparse_quant_attention(qp, kp, vp, mblk, block=BLOCK, qk_bits=0, pv_bits=0),
                         torch.argsort(perm, -1))
    torch.testing.assert_close(paro(q, k, v, **SPEC.params({"block": BLOCK}), spatial=GRID), want)


def test_mask_recall_on_hand_built_cases() -> None:
    from attnbench.impls.paro import incoherence, mask_recall

    n, block = 32, 8
    ident = torch.arange(n)[None].expand(1, n)
    nb = n // block
    diag = torch.eye(nb, dtype=torch.bool)[None]
    uniform = torch.zeros(1, 1, n, 4)  # every score equal: each row's mass spreads evenly over the blocks
    assert mask_recall(uniform, uniform, ident, diag, block) == pytest.approx(1 / nb)
    assert incoherence(uniform, uniform, ident, diag, block) == pytest.approx(1.0)
    peaked = torch.nn.functional.one_hot(torch.arange(n), n).float()[None, None] * 30.0  # attends to itself
    assert mask_recall(peaked, peaked, ident, diag, block) > 0.999
    assert mask_recall(peaked, peaked, ident, diag.roll(1, dims=-1), block) < 1e-3
    assert incoherence(peaked, peaked, ident, diag, block) > 5.0


def test_correctness_rows_carry_mask_recall() -> None:
    from attnbench.registry import SUITES
    from attnbench.spec import Workload, params_json
    from attnbench.suite import Case, ResolvedCase

    w = Workload(batch=1, heads_q=2, seq_q=256, seq_kv=256, head_dim=16, spatial=GRID)
    case = Case("correctness", "paro", "native", w, params_json({"block": BLOCK}))
    rows = {r.metric: r for r in SUITES.get("correctness").run(ResolvedCase.resolve(case, METHODS))}
    assert rows["max_abs_err"].status == "ok"
    assert 0.0 < rows["mask_recall"].value < 1.0 and rows["incoherence"].value >= 1.0
