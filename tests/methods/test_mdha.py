"""MDHA invariants (spec card methods-modeling A1): identity convs ⇒ MHA, causality, FLOPs, positions."""

from __future__ import annotations

import pytest
import torch

from attnbench.flops import counted_flops
from attnbench.impls.mdha import SPEC, mdha_flops
from attnbench.layers import build_layer
from attnbench.ops import causal_mask, dense_attention
from attnbench.proxy.train import effective_pos
from attnbench.registry import METHODS
from attnbench.spec import Workload

C, H, N = 32, 4, 24


def _layer(backend: str = "reference", *, causal: bool = True, **params):
    torch.manual_seed(0)
    return build_layer("mdha", backend, C, H, causal=causal, params=params).double()


def _x(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, N, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("share", [True, False])
def test_identity_convs_are_mha(causal: bool, share: bool) -> None:
    layer, x = _layer(causal=causal, share_across_heads=share), _x()
    for conv in layer.convs:
        conv.set_identity()
    heads = lambda t: t.unflatten(-1, (H, C // H)).transpose(1, 2)  # noqa: E731
    q, k, v = (heads(t) for t in layer.qkv(x).chunk(3, -1))
    o = dense_attention(q, k, v, causal_mask(N, N) if causal else None)
    torch.testing.assert_close(layer(x), layer.out(o.transpose(1, 2).flatten(2)))


def test_causal_output_ignores_the_future() -> None:
    layer, x = _layer(), _x()
    y = x.clone()
    y[:, 10:] += 1.0
    torch.testing.assert_close(layer(x)[:, :10], layer(y)[:, :10])
    assert not torch.allclose(layer(x)[:, 10:], layer(y)[:, 10:])


def test_kernel_sharing_shapes() -> None:
    assert _layer(share_across_heads=True).convs[0].weight.shape == (C // H, 3)
    assert _layer(share_across_heads=False).convs[0].weight.shape == (C, 3)


@pytest.mark.parametrize("share", [True, False])
def test_sdpa_matches_reference(share: bool) -> None:
    x = _x()
    fused = _layer("sdpa", share_across_heads=share)
    torch.testing.assert_close(fused(x), _layer(share_across_heads=share)(x))


def test_flops_formula() -> None:
    w = Workload(batch=2, heads_q=4, heads_kv=4, seq_q=128, seq_kv=128, head_dim=16)
    f = mdha_flops(w, SPEC.params())
    assert f.useful == 4 * 2 * 4 * 128 * 128 * 16 + 2 * 3 * 3 * 2 * 128 * 64 + 8 * 2 * 128 * 64 * 64


def test_counted_flops_match_the_formula() -> None:
    w = Workload(batch=1, heads_q=4, heads_kv=4, seq_q=N, seq_kv=N, head_dim=C // 4)
    layer, x = _layer(causal=False), _x()[:1]
    assert counted_flops(lambda: layer(x)) == mdha_flops(w, SPEC.params()).useful


def test_trains_with_the_same_positions_as_mha() -> None:
    """The convs are not a position code (card A1 names none): MDHA gets MHA's scheme in the proxies,
    RMHA (a relative position code) still gets none added."""
    for pos in ("rope", "learned", "none"):
        assert effective_pos(METHODS.get("mdha"), pos) == effective_pos(METHODS.get("mha"), pos)
    assert effective_pos(METHODS.get("rmha"), "rope")[0] == "none"
    x, plain = _x(), _layer()
    torch.manual_seed(0)
    rot = build_layer("mdha", "reference", C, H, causal=True, rope=True).double()
    torch.testing.assert_close(rot(x)[:, :1], plain(x)[:, :1])  # position 0 is not rotated
    assert not torch.allclose(rot(x)[:, 1:], plain(x)[:, 1:])
