"""DHA invariants (spec card methods-efficient §12): GQA, MHA and MQA as special cases, fusion, cache."""

from __future__ import annotations

import pytest
import torch

import attnbench.kernels.dha  # noqa: F401  (registers dha and its SDPA step)
from attnbench.flops import counted_flops
from attnbench.impls.dha import SPEC, dha_flops, dha_kv_cache_bytes
from attnbench.layers import build_layer
from attnbench.ops import causal_mask, dense_attention
from attnbench.spec import Workload

E, H, N, D = 32, 4, 20, 8


def _layer(backend: str = "reference", *, causal: bool = True, **params):
    torch.manual_seed(0)
    return build_layer("dha", backend, E, H, causal=causal, params=params).double()


def _x() -> torch.Tensor:
    return torch.randn(2, N, E, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _heads(t: torch.Tensor) -> torch.Tensor:
    return t.unflatten(-1, (-1, D)).transpose(1, 2)


def _gqa(layer, x: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """GQA / MHA / MQA on the layer's own projections, by repeating kv heads (dense_attention)."""
    mask = causal_mask(N, N) if causal else None
    o = dense_attention(_heads(layer.q(x)), _heads(layer.k(x)), _heads(layer.v(x)), mask)
    return layer.o(o.transpose(1, 2).flatten(2))


MAPS = [{"kmap": (0, 0, 1, 1), "vmap": (0, 0, 1, 1)},  # GQA, contiguous (native GQA path)
        {"kmap": (1, 0, 1, 0), "vmap": (1, 0, 1, 0)},  # shared, permuted groups
        {"kmap": (0, 1, 1, 2), "vmap": (0, 0, 0, 0)},  # decoupled, uneven
        {"k_heads": 2, "v_heads": 1}]


@pytest.mark.parametrize("params", MAPS)
@pytest.mark.parametrize("causal", [True, False])
def test_sdpa_matches_reference(params: dict, causal: bool) -> None:
    x = _x()
    torch.testing.assert_close(_layer("sdpa", causal=causal, **params)(x), _layer(causal=causal, **params)(x))


@pytest.mark.parametrize("n_kv", [4, 2, 1])  # MHA, GQA (maps h//G), MQA
def test_maps_h_div_g_are_gqa(n_kv: int) -> None:
    g = H // n_kv
    layer, x = _layer(kmap=tuple(h // g for h in range(H)), vmap=tuple(h // g for h in range(H))), _x()
    torch.testing.assert_close(layer(x), _gqa(layer, x))


def test_fusion_uniform_is_mean_pool_and_one_hot_prunes() -> None:
    torch.manual_seed(3)
    wq, wk, wv, wo = (torch.randn(E, E, dtype=torch.float64) for _ in range(4))
    layer, x = _layer(kmap=(0, 0, 1, 1), vmap=(0, 0, 1, 1)), _x()
    layer.load_fused(wq, wk, wv, wo, torch.full((H,), 0.5), torch.full((H,), 0.5))
    pooled = lambda w: w.unflatten(0, (2, 2, D)).mean(1).flatten(0, 1)  # noqa: E731
    torch.testing.assert_close(layer.k.weight, pooled(wk))
    torch.testing.assert_close(layer.v.weight, pooled(wv))
    one_hot = torch.tensor([0.0, 1.0, 1.0, 0.0])  # keep head 1 for group 0, head 2 for group 1
    layer.load_fused(wq, wk, wv, wo, one_hot, one_hot)
    keep = [1, 1, 2, 2]
    k_mha, v_mha = _heads(x @ wk.T), _heads(x @ wv.T)
    o = dense_attention(_heads(x @ wq.T), k_mha[:, keep], v_mha[:, keep], causal_mask(N, N))
    torch.testing.assert_close(layer(x), o.transpose(1, 2).flatten(2) @ wo.T)


def test_kv_cache_bytes_and_flops() -> None:
    params = SPEC.params({"kmap": (0, 1, 1, 2), "vmap": (0, 0, 0, 0)})
    w = Workload(batch=2, heads_q=H, heads_kv=H, seq_q=N, seq_kv=N, head_dim=D)
    layer, x = _layer(**params), _x()
    k, v = _heads(layer.k(x)), _heads(layer.v(x))
    assert dha_kv_cache_bytes(w, params) == (k.numel() + v.numel()) * 4  # fp32 workload
    assert dha_kv_cache_bytes(w, params) == 2 * N * (3 + 1) * D * 4
    torch.manual_seed(0)
    sdpa = build_layer("dha", "sdpa", E, H, params=params)
    counted = counted_flops(lambda: sdpa(torch.randn(2, N, E)))
    assert counted == pytest.approx(dha_flops(w, params).useful, rel=1e-9)


def test_bad_maps_are_reported() -> None:
    w = Workload(heads_q=4, heads_kv=4)
    assert SPEC.why_not(w, SPEC.params({"kmap": (0, 2, 2, 2)})) is not None
    assert SPEC.why_not(w, SPEC.params({"vmap": (0, 0)})) is not None
