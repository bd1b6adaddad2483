"""Non-approximate (query-independent) variant (spec card methods-modeling A4): rows identical across
queries up to the causal prefix, linear-time form == reference, FLOPs."""

from __future__ import annotations

import pytest
import torch

import attnbench.kernels.decon_nonapprox as knon
from attnbench.impls.decon_nonapprox import SPEC, decon_nonapprox, nonapprox_flops
from attnbench.spec import Workload

N = 40


def _qkv(hkv: int = 2):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, 2, N, 8, generator=g, dtype=torch.float64),
            torch.randn(1, hkv, N, 8, generator=g, dtype=torch.float64),
            torch.randn(1, hkv, N, 8, generator=g, dtype=torch.float64))


def test_noncausal_rows_are_identical() -> None:
    o = decon_nonapprox(*_qkv(), causal=False)
    torch.testing.assert_close(o, o[:, :, :1].expand_as(o))


def test_causal_row_is_the_full_row_of_its_prefix() -> None:
    q, k, v = _qkv()
    o = decon_nonapprox(q, k, v, causal=True)
    for i in (0, 7, N - 1):
        prefix = decon_nonapprox(q[:, :, : i + 1], k[:, :, : i + 1], v[:, :, : i + 1], causal=False)
        torch.testing.assert_close(o[:, :, i], prefix[:, :, 0])


def test_weights_ignore_the_query_at_other_positions() -> None:
    q, k, v = _qkv()
    q2 = q.clone()
    q2[:, :, 5] += 1.0  # changes only key 5's score: every row that can see key 5 moves, others not
    a, b = decon_nonapprox(q, k, v, causal=True), decon_nonapprox(q2, k, v, causal=True)
    torch.testing.assert_close(a[:, :, :5], b[:, :, :5])


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("hkv", [1, 2])
def test_native_matches_reference(causal: bool, hkv: int) -> None:
    q, k, v = _qkv(hkv)
    torch.testing.assert_close(knon.decon_nonapprox_native(q, k, v, causal=causal),
                               decon_nonapprox(q, k, v, causal=causal))


def test_flops_are_linear() -> None:
    w = Workload(batch=1, heads_q=2, heads_kv=2, seq_q=64, seq_kv=64, head_dim=8)
    assert nonapprox_flops(w, SPEC.params()).useful == 4 * 2 * 64 * 8
    assert SPEC.why_not(w.replace(seq_q=32), SPEC.params()) is not None
