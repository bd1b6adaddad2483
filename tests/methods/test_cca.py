"""CCA / CCGQA invariants (spec card methods-efficient §6)."""

from __future__ import annotations

import pytest
import torch

import attnbench.kernels.cca  # noqa: F401  (registers cca and its SDPA step)
import attnbench.kernels.ccgqa  # noqa: F401
from attnbench.flops import counted_flops
from attnbench.impls.cca import SPEC, cca_flops, cca_kv_cache_bytes
from attnbench.layers import build_layer
from attnbench.ops import causal_mask, dense_attention
from attnbench.spec import Workload

E, H, N = 32, 4, 24
OFF = {"compression": 1, "convs": False, "mean_residual": False, "value_shift": False, "qk_norm": False}


def _layer(method: str, backend: str = "reference", *, causal: bool = True, seed: int = 0, rope: bool = False,
           **params):
    torch.manual_seed(seed)
    return build_layer(method, backend, E, H, causal=causal, params=params, rope=rope).double()


def _x(n: int = N, seed: int = 1) -> torch.Tensor:
    return torch.randn(2, n, E, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("method", ["cca", "ccgqa"])
@pytest.mark.parametrize("causal", [True, False])
def test_sdpa_matches_reference(method: str, causal: bool) -> None:
    x = _x()
    ref = _layer(method, causal=causal)(x)
    torch.testing.assert_close(_layer(method, "sdpa", causal=causal)(x), ref)


@pytest.mark.parametrize("causal", [True, False])
def test_compression_one_with_features_off_is_mha(causal: bool) -> None:
    layer, x = _layer("cca", causal=causal, **OFF), _x()
    heads = lambda t: t.unflatten(-1, (H, E // H)).transpose(1, 2)  # noqa: E731
    q, k, v = heads(layer.q(x)), heads(layer.k(x)), heads(layer.v(x))
    mask = causal_mask(N, N) if causal else None
    want = layer.o(dense_attention(q, k, v, mask).transpose(1, 2).flatten(2))
    torch.testing.assert_close(layer(x), want)


@pytest.mark.parametrize("method", ["cca", "ccgqa"])
def test_causal_future_does_not_leak(method: str) -> None:
    layer, x = _layer(method), _x()
    x2 = x.clone()
    x2[:, 10:] += torch.randn_like(x2[:, 10:])
    torch.testing.assert_close(layer(x2)[:, :10], layer(x)[:, :10])


@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("method", ["cca", "ccgqa"])
def test_decode_matches_forward_and_cache_bytes(method: str, rope: bool) -> None:
    layer, x = _layer(method, kernel_dw=3, kernel_grouped=2, rope=rope), _x()
    cache, outs = layer.empty_cache(2, dtype=torch.float64), []
    for t in range(N):
        y, cache = layer.decode(x[:, t:t + 1], cache)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), layer(x))
    w = Workload(batch=2, heads_q=H, heads_kv=H, seq_q=N, seq_kv=N, head_dim=E // H, dtype="float64",
                 causal=True)
    from attnbench.registry import METHODS
    params = METHODS.get(method).spec.params({"kernel_dw": 3, "kernel_grouped": 2})
    assert cache.nbytes() == cca_kv_cache_bytes(w, params)
    # KV part alone: 2·ẽ_kv per token (card), ẽ_kv = H_kv·d_h
    assert cache.k.numel() + cache.v.numel() == 2 * N * 2 * layer.e_kv


def test_qk_norms_and_temperature() -> None:
    layer, x = _layer("ccgqa"), _x()
    with torch.no_grad():
        layer.temperature.copy_(torch.tensor([-0.5]))
    qt, kt = layer.q(x), layer.k(x)
    q, k = layer._qk(qt, kt, torch.nn.functional.pad(torch.cat([qt, kt], -1), (0, 0, 2, 0)))
    d = layer.d_h
    torch.testing.assert_close(q.norm(dim=-1), torch.full_like(q[..., 0], d ** 0.5))
    torch.testing.assert_close(k.norm(dim=-1), torch.full_like(k[..., 0], 0.5 * d ** 0.5))


def test_flops_formula_matches_counter() -> None:
    n = 64
    w = Workload(batch=1, heads_q=H, heads_kv=H, seq_q=n, seq_kv=n, head_dim=E // H, dtype="float32")
    params = SPEC.params()
    torch.manual_seed(0)
    layer = build_layer("cca", "sdpa", E, H, params=params)
    counted = counted_flops(lambda: layer(torch.randn(1, n, E)))
    # the counter sees the first conv on the padded length (N + k1 - 1 outputs), hence 1 %
    assert counted == pytest.approx(cca_flops(w, params).useful, rel=1e-2)
