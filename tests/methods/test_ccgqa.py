"""CCGQA invariants (spec card methods-efficient §6): CCA with kv-head sharing in the latent."""

from __future__ import annotations

import pytest
import torch

import attnbench.kernels.ccgqa  # noqa: F401  (registers ccgqa and its SDPA step)
from attnbench.impls.ccgqa import SPEC
from attnbench.layers import build_layer
from attnbench.ops import causal_mask, dense_attention
from attnbench.spec import Workload

E, H, N = 32, 4, 24
OFF = {"compression": 1, "convs": False, "mean_residual": False, "value_shift": False, "qk_norm": False}


def _layer(method: str = "ccgqa", backend: str = "reference", **params):
    torch.manual_seed(0)
    return build_layer(method, backend, E, H, causal=True, params=params).double()


def _x() -> torch.Tensor:
    return torch.randn(2, N, E, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_one_group_is_cca() -> None:
    x = _x()
    torch.testing.assert_close(_layer(groups=1)(x), _layer("cca")(x))


@pytest.mark.parametrize("groups", [2, 4])  # GQA, MQA
def test_compression_one_with_features_off_is_gqa(groups: int) -> None:
    layer, x = _layer(groups=groups, **OFF), _x()
    heads = lambda t: t.unflatten(-1, (-1, E // H)).transpose(1, 2)  # noqa: E731
    o = dense_attention(heads(layer.q(x)), heads(layer.k(x)), heads(layer.v(x)), causal_mask(N, N))
    torch.testing.assert_close(layer(x), layer.o(o.transpose(1, 2).flatten(2)))
    assert layer.h_kv == H // groups


def test_sharing_shrinks_the_cache_by_the_group_count() -> None:
    w = Workload(batch=1, heads_q=8, heads_kv=8, seq_q=4096, seq_kv=4096, head_dim=16)
    kv = {g: SPEC.kv_cache_bytes(w, SPEC.params({"groups": g, "convs": False, "value_shift": False}))
          for g in (1, 2, 4)}
    assert kv[1] == 2 * 4096 * 4 * 16 * 4  # 2·ẽ_kv per token, ẽ_kv = (8 / C=2)·16, fp32
    assert kv[1] / kv[2] == 2 and kv[1] / kv[4] == 4
