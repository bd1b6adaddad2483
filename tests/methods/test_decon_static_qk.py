"""StaticEmbQK (spec card methods-modeling A4): Q/K from bound embeddings, V from the input."""

from __future__ import annotations

import torch

from attnbench.layers import build_layer
from attnbench.ops import causal_mask, dense_attention

C, N, H = 32, 20, 4


def _layer(backend: str = "reference"):
    torch.manual_seed(0)
    return build_layer("decon_static_qk", backend, C, H, causal=True).double()


def _x(seed: int) -> torch.Tensor:
    return torch.randn(2, N, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_bound_embeddings_fix_the_map() -> None:
    layer, e = _layer(), _x(5)
    layer.set_qk_source(e)
    x1, x2 = _x(1), _x(2)
    torch.testing.assert_close(layer(x1 + x2), layer(x1) + layer(x2))


def test_unbound_is_standard_attention() -> None:
    layer, x = _layer(), _x(1)
    heads = lambda t: t.unflatten(-1, (H, C // H)).transpose(1, 2)  # noqa: E731
    o = dense_attention(heads(layer.q(x)), heads(layer.k(x)), heads(layer.v(x)), causal_mask(N, N))
    torch.testing.assert_close(layer(x), layer.out(o.transpose(1, 2).flatten(2)))
    torch.testing.assert_close(_layer("sdpa")(x), layer(x))
