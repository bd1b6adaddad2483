"""RCMHA invariants (spec card methods-modeling A1): identity convs ⇒ RMHA; shared kernel; FLOPs."""

from __future__ import annotations

import pytest
import torch

from attnbench.impls.rcmha import SPEC
from attnbench.impls.rmha import rel_flops
from attnbench.layers import build_layer
from attnbench.spec import Workload

C, H, N = 32, 4, 24


def _layer(method: str = "rcmha", backend: str = "reference", *, causal: bool = True, **params):
    torch.manual_seed(0)
    return build_layer(method, backend, C, H, causal=causal, params={"max_len": 64, **params}).double()


def _x() -> torch.Tensor:
    return torch.randn(2, N, C, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.mark.parametrize("causal", [True, False])
def test_identity_convs_are_rmha(causal: bool) -> None:
    rc, x = _layer(causal=causal), _x()
    for conv in rc.convs:
        conv.set_identity()
    torch.testing.assert_close(rc(x), _layer("rmha", causal=causal)(x))  # same seed ⇒ same shared weights


def test_kernel_shared_across_heads_by_default() -> None:
    assert _layer().convs[0].weight.shape == (C // H, 3)


@pytest.mark.parametrize("rel_kind", ["learned", "sinusoidal"])
def test_sdpa_matches_reference(rel_kind: str) -> None:
    x = _x()
    torch.testing.assert_close(_layer(backend="sdpa", rel_kind=rel_kind)(x), _layer(rel_kind=rel_kind)(x))


def test_flops_add_the_convs() -> None:
    w = Workload(batch=1, heads_q=4, heads_kv=4, seq_q=64, seq_kv=64, head_dim=16)
    conv = 2 * 3 * 3 * 64 * 64
    assert rel_flops(w, SPEC.params()).useful == rel_flops(w, {**SPEC.params(), "conv": False}).useful + conv
