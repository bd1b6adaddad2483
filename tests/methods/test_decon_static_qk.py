"""StaticEmbQK (spec card methods-modeling A4): Q/K from the token embeddings (bound, or handed in
by the proxy model per call), V from the input."""

from __future__ import annotations

import pytest
import torch

from attnbench.layers import build_layer
from attnbench.ops import causal_mask, dense_attention
from attnbench.proxy.train import ModelConfig, ProxyModel

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


def test_embeddings_per_call_fix_the_map_and_fused_agrees() -> None:
    layer, e = _layer(), _x(5)
    x1, x2 = _x(1), _x(2)
    torch.testing.assert_close(layer(x1 + x2, emb=e), layer(x1, emb=e) + layer(x2, emb=e))
    torch.testing.assert_close(_layer("sdpa")(x1, emb=e), layer(x1, emb=e))
    heads = lambda t: t.unflatten(-1, (H, C // H)).transpose(1, 2)  # noqa: E731
    o = dense_attention(heads(layer.q(e)), heads(layer.k(e)), heads(layer.v(x1)), causal_mask(N, N))
    torch.testing.assert_close(layer(x1, emb=e), layer.out(o.transpose(1, 2).flatten(2)))


@pytest.mark.parametrize("method", ["decon_static_qk", "decon_hybrid_static_qk"])
def test_proxy_model_binds_the_token_embeddings(method: str) -> None:
    """In a model, every StaticEmbQK layer takes Q/K from the model's input embeddings, not from
    its own input: layer 2's map does not change when the first block's output does."""
    torch.manual_seed(0)
    model = ProxyModel(ModelConfig(method=method, vocab=11, out_dim=11, d_model=C, n_heads=H, n_layers=2,
                                   max_len=N)).double()
    seen: list[torch.Tensor | None] = []
    last = model.blocks[-1].attn if method == "decon_static_qk" else model.blocks[0].attn
    assert last.wants_embeddings
    last.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs.get("emb")), with_kwargs=True)
    tokens = torch.randint(0, 11, (2, N), generator=torch.Generator().manual_seed(3))
    model(tokens)
    want = model.embed(tokens) + model.pos[:N]
    torch.testing.assert_close(seen[0], want)
    if method == "decon_static_qk":  # layer 2's input differs from the embeddings: a real binding
        h = model.blocks[0](want)
        assert not torch.allclose(last(model.blocks[1].ln1(h)), last(model.blocks[1].ln1(h), emb=want))
