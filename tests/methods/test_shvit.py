"""SHViT SHSA invariants (spec card methods-efficient §10)."""

from __future__ import annotations

import pytest
import torch

import attnbench.kernels.shvit  # noqa: F401  (registers shvit and its SDPA step)
from attnbench.flops import counted_flops
from attnbench.impls.shvit import SPEC, shvit_flops
from attnbench.layers import build_layer
from attnbench.ops import dense_attention
from attnbench.spec import Workload

C, N = 28, 36


def _layer(backend: str = "reference", **params):
    torch.manual_seed(0)
    return build_layer("shvit", backend, C, 4, params=params, spatial=(6, 6)).double()


def _x() -> torch.Tensor:
    return torch.randn(2, N, C, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_sdpa_matches_reference_and_shape() -> None:
    x = _x()
    y = _layer()(x)
    assert y.shape == x.shape
    assert _layer().cp == 6 and _layer().qk_dim == 16  # C_p = round(28 / 4.67), D_qk ≠ D_v
    torch.testing.assert_close(_layer("sdpa")(x), y)


def test_full_split_is_single_head_attention() -> None:
    layer, x = _layer(partial_ratio=1.0, qk_dim=C), _x()
    xn = torch.nn.functional.group_norm(x.transpose(1, 2), 1, layer.norm.weight, layer.norm.bias)
    q, k, v = layer.qkv(xn.transpose(1, 2))[:, None].split([C, C, C], -1)
    want = layer.proj(torch.relu(dense_attention(q, k, v)[:, 0]))
    torch.testing.assert_close(layer(x), want)


def test_bypass_channels_reach_the_projection_unchanged() -> None:
    layer, x = _layer(), _x()
    seen = {}
    layer.proj.register_forward_hook(lambda m, i, o: seen.update(inp=i[0]))
    layer(x)
    torch.testing.assert_close(seen["inp"][..., layer.cp:], torch.relu(x[..., layer.cp:]))


def test_flops_formula_matches_counter() -> None:
    params = SPEC.params()
    w = Workload(batch=1, heads_q=4, heads_kv=4, seq_q=N, seq_kv=N, head_dim=C // 4)
    torch.manual_seed(0)
    layer = build_layer("shvit", "reference", C, 4, params=params)  # sdpa pads q/k to D_v
    assert counted_flops(lambda: layer(torch.randn(1, N, C))) == pytest.approx(shvit_flops(w, params).useful)


def test_macro_design_has_no_attention_in_the_first_stage() -> None:
    from attnbench.impls.shvit import SHSA
    from attnbench.suites._image_models import ImageModelConfig, SHViTBlock, SHViTNet, shvit_grids

    torch.manual_seed(0)
    cfg = ImageModelConfig(method="shvit", n_classes=10, d_model=C, n_heads=1, patch=2, grid=(14, 14),
                           takes_grid=True, shvit_depths=(1, 2, 1))
    net = SHViTNet(cfg)
    blocks = [m for m in net.stages if isinstance(m, SHViTBlock)]
    assert [b.grid for b in blocks] == [(14, 14), (7, 7), (7, 7), (4, 4)] == [shvit_grids((14, 14), (1, 2, 1))[i]
                                                                               for i in (0, 1, 1, 2)]
    assert blocks[0].attn is None and all(isinstance(b.attn, SHSA) for b in blocks[1:])
    assert sum(isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2) for m in net.stem.modules()) == 1
    assert net(torch.rand(3, 28, 28, 1)).shape == (3, 10)
