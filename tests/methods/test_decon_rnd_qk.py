"""RndEmbQK (spec card methods-modeling A4): the attention map is input-independent."""

from __future__ import annotations

import pytest
import torch

from attnbench.impls._deconstructed import layer_seed
from attnbench.impls.decon_rnd_qk import SPEC
from attnbench.layers import build_layer
from attnbench.proxy.train import ModelConfig, ProxyModel
from attnbench.spec import Workload

C, N = 32, 20


def _layer(backend: str = "reference", causal: bool = True):
    torch.manual_seed(0)
    return build_layer("decon_rnd_qk", backend, C, 4, causal=causal, params={"max_len": 64}).double()


def _x(seed: int) -> torch.Tensor:
    return torch.randn(2, N, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("causal", [True, False])
def test_map_is_input_independent(causal: bool) -> None:
    layer = _layer(causal=causal)  # fixed map A ⇒ the layer is linear in x
    x1, x2 = _x(1), _x(2)
    torch.testing.assert_close(layer(x1 + 2 * x2), layer(x1) + 2 * layer(x2))
    torch.testing.assert_close(layer(x1[:1]), layer(x1)[:1])  # same map for every batch element


def test_bound_source_replaces_the_noise() -> None:
    layer, x = _layer(), _x(1)
    before = layer(x)
    layer.set_qk_source(_x(3)[:1])  # e.g. FixedSeqQK: hidden states of a fixed text
    assert not torch.allclose(layer(x), before)
    layer.set_qk_source(None)
    torch.testing.assert_close(layer(x), before)
    torch.testing.assert_close(_layer("sdpa")(x), before)


def test_flops_count_the_qk_projections_once_per_batch() -> None:
    w = Workload(batch=4, heads_q=4, heads_kv=4, seq_q=16, seq_kv=16, head_dim=8)
    c2 = 32 * 32
    assert SPEC.flops(w, SPEC.params()).useful == 4 * 4 * 4 * 16 * 16 * 8 + 4 * 4 * 16 * c2 + 4 * 16 * c2


@pytest.mark.parametrize("method", ["decon_rnd_qk", "decon_hybrid_rnd_qk"])
def test_each_layer_of_a_model_draws_its_own_noise(method: str) -> None:
    torch.manual_seed(0)
    model = ProxyModel(ModelConfig(method=method, vocab=8, out_dim=8, d_model=C, n_heads=4, n_layers=4,
                                   params={"max_len": 64, "seed": 5}, max_len=N))
    noises = [b.attn.noise for b in model.blocks if getattr(b.attn, "noise", None) is not None]
    assert len(noises) == (4 if method == "decon_rnd_qk" else 2)
    assert all(not torch.equal(a, b) for i, a in enumerate(noises) for b in noises[i + 1:])
    gen = torch.Generator().manual_seed(layer_seed(5, 0))
    torch.testing.assert_close(noises[0], torch.randn(1, 64, C, generator=gen))  # layer 0: the seed itself
    layer = _layer()
    layer.set_layer_index(2)
    again = _layer()
    again.set_layer_index(2)
    torch.testing.assert_close(layer.noise, again.noise)  # deterministic per (seed, layer)
