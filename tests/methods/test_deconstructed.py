"""Hybrid layer plans for the Deconstructing-Attention variants (spec card methods-modeling A4) and the
registered hybrids (`decon_hybrid_*`: variant in odd layers, MHA in even ones, as the proxies build them)."""

from __future__ import annotations

import pytest
import torch

from attnbench.impls._deconstructed import HYBRID_PATTERNS, hybrid_layers
from attnbench.layers import AttentionLayer, build_layer
from attnbench.proxy.train import ModelConfig, ProxyModel
from attnbench.registry import METHODS
from attnbench.spec import Backend

V = "decon_nonapprox"


def _variant_layers(pattern: str, n: int = 24) -> list[int]:
    return [i for i, m in enumerate(hybrid_layers(n, V, pattern), start=1) if m == V]


def test_paper_ranges_for_24_layers() -> None:
    assert _variant_layers("alternate") == list(range(1, 25, 2))
    assert _variant_layers("top") == list(range(13, 25))
    assert _variant_layers("middle") == list(range(7, 19))
    assert _variant_layers("bottom") == list(range(1, 7))
    assert [i for i in range(1, 25) if i not in _variant_layers("quarter")] == list(range(4, 25, 4))
    assert _variant_layers("bilateral") == [1, 24]
    assert _variant_layers("uniform") == list(range(1, 25))


@pytest.mark.parametrize("pattern", HYBRID_PATTERNS)
def test_every_layer_is_a_registered_method(pattern: str) -> None:
    plan = hybrid_layers(6, V, pattern)
    assert len(plan) == 6 and all(m in METHODS for m in plan)


def test_unknown_pattern_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="alternate"):
        hybrid_layers(4, V, "sideways")


HYBRIDS = ["decon_hybrid_approx", "decon_hybrid_mlp", "decon_hybrid_nonapprox", "decon_hybrid_rnd_qk",
           "decon_hybrid_static_qk"]


def _built(method: str, backend: str = "reference"):
    torch.manual_seed(0)
    return build_layer(method, backend, 16, 2, causal=True).double()


@pytest.mark.parametrize("method", HYBRIDS)
def test_hybrids_are_board_rows_with_the_papers_plan(method: str) -> None:
    entry = METHODS.get(method)
    assert entry.spec.family == "deconstructed" and entry.spec.claims
    assert entry.spec.layout(4, entry.spec.params()) == (method, "mha", method, "mha")
    torch.manual_seed(0)
    model = ProxyModel(ModelConfig(method=method, vocab=8, out_dim=8, d_model=16, n_heads=2, n_layers=4,
                                   max_len=12))
    assert model.plan == (method, "mha", method, "mha")
    assert isinstance(model.blocks[1].attn, AttentionLayer) and model.blocks[1].attn.entry.name == "mha"
    assert model(torch.randint(0, 8, (2, 12))).shape == (2, 12, 8)


@pytest.mark.parametrize("method", HYBRIDS)
def test_hybrid_layer_is_its_variants_layer(method: str) -> None:
    x = torch.randn(2, 12, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    base = method.replace("decon_hybrid_", "decon_")
    torch.testing.assert_close(_built(method)(x), _built(base)(x))


@pytest.mark.parametrize("method,backend", [(m, b.value) for m in HYBRIDS for b in METHODS.get(m).backends
                                            if b not in (Backend.REFERENCE, Backend.FLEX_COMPILED)])
def test_hybrid_fused_backends_match_the_reference(method: str, backend: str) -> None:
    x = torch.randn(2, 12, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(_built(method, backend)(x), _built(method)(x), rtol=1e-6, atol=1e-6)
