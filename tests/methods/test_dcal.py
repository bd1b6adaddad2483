"""DCAL invariants (spec card methods-modeling A6): R = 100% ⇒ GLCA == SA, PWCA with the same image
⇒ SA, rollout rows sum to 1, fused == reference with an accumulated rollout, FLOPs."""

from __future__ import annotations

import pytest
import torch

import attnbench.kernels.dcal  # noqa: F401  (registers the SDPA step)
from attnbench.impls.dcal import SPEC, attention_rollout, dcal_flops, n_local, top_local
from attnbench.layers import build_layer
from attnbench.ops import dense_attention
from attnbench.spec import Workload

C, H, N = 32, 4, 30


def _layer(backend: str = "reference", **params):
    torch.manual_seed(0)
    return build_layer("dcal", backend, C, H, params=params).double()


def _x(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, N, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _self_attention(layer, x: torch.Tensor) -> torch.Tensor:
    q, k, v = layer._qkv(x)
    return layer.out(dense_attention(q, k, v).transpose(1, 2).flatten(2))


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_all_tokens_local_is_self_attention(backend: str) -> None:
    layer, x = _layer(backend, r_ratio=1.0), _x()
    torch.testing.assert_close(layer(x), _self_attention(layer, x))


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_pwca_with_itself_is_self_attention(backend: str) -> None:
    layer, x = _layer(backend, branch="pwca"), _x()
    layer.pair = x  # duplicated keys leave the per-key weights unchanged
    torch.testing.assert_close(layer(x), _self_attention(layer, x))


def test_glca_updates_only_r_rows() -> None:
    out = _layer(r_ratio=0.2)(_x())
    assert ((out.abs().sum(-1) > 0).sum(-1) == n_local(N, 0.2)).all()


def test_rollout_rows_sum_to_one() -> None:
    probs = [torch.softmax(torch.randn(2, H, N, N, dtype=torch.float64), -1) for _ in range(3)]
    torch.testing.assert_close(attention_rollout(probs).sum(-1), torch.ones(2, N, dtype=torch.float64))


def test_sdpa_matches_reference_with_prior_rollout() -> None:
    x = _x()
    prior = attention_rollout([torch.softmax(torch.randn(2, H, N, N, dtype=torch.float64), -1)])
    ref, fused = _layer(r_ratio=0.3), _layer("sdpa", r_ratio=0.3)
    ref.prior_rollout = fused.prior_rollout = prior
    torch.testing.assert_close(fused(x), ref(x))


def test_flops_and_no_causal_form() -> None:
    w = Workload(batch=1, heads_q=4, heads_kv=4, seq_q=100, seq_kv=100, head_dim=8)
    c2 = 32 * 32
    glca = 4 * 4 * 10 * 100 * 8 + 2 * 4 * 100 * 8 + 6 * 100 * c2 + 2 * 10 * c2
    assert dcal_flops(w, SPEC.params()).useful == glca
    assert dcal_flops(w, SPEC.params({"branch": "pwca"})).useful == 4 * 4 * 100 * 200 * 8 + 14 * 100 * c2
    assert SPEC.why_not(w.replace(causal=True), SPEC.params()) is not None


# -- the paper's architecture (image_cls): SA stack + GLCA on the chained rollout + training-only PWCA --
def _onehot_rows(rows: list[int]) -> torch.Tensor:
    return torch.eye(len(rows), dtype=torch.float64)[rows][None, None]  # [1, 1, N, N]


def test_rollout_chains_across_layers_hand_built() -> None:
    # layer 1: CLS → token 3, token 1 → token 3; layer 2: CLS → token 1 (others attend to themselves)
    p1, p2 = _onehot_rows([3, 3, 2, 3]), _onehot_rows([1, 1, 2, 3])
    chained = attention_rollout([p1, p2])[0, 0]
    torch.testing.assert_close(chained, torch.tensor([0.25, 0.25, 0.0, 0.5], dtype=torch.float64))
    assert top_local(chained[None, 1:], 1).item() + 1 == 3  # chained: token 3
    assert top_local(attention_rollout([p2])[0, 0][None, 1:], 1).item() + 1 == 1  # last layer alone: token 1


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_glca_chains_prior_probs_like_a_given_rollout(backend: str) -> None:
    x = _x()
    probs = [torch.softmax(torch.randn(2, H, N, N, dtype=torch.float64), -1) for _ in range(2)]
    a, b = _layer(backend, r_ratio=0.2), _layer(backend, r_ratio=0.2)
    a.prior_probs, b.prior_rollout = probs, attention_rollout(probs)
    torch.testing.assert_close(a(x), b(x))


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_sa_branch_is_self_attention_and_keeps_probs(backend: str) -> None:
    layer, x = _layer(backend, branch="sa"), _x()
    layer.keep_probs = True
    torch.testing.assert_close(layer(x), _self_attention(layer, x))
    q, k, _ = layer._qkv(x)
    torch.testing.assert_close(layer.probs, torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, -1).float())


def _vit(r_ratio: float = 0.1, n_layers: int = 2):
    from attnbench.suites._image_models import ImageModelConfig, ImageViT

    torch.manual_seed(0)
    cfg = ImageModelConfig(method="dcal", n_classes=3, params={"r_ratio": r_ratio}, d_model=16, n_heads=2,
                           n_layers=n_layers, patch=2, grid=(3, 3), pool="cls", branches=("sa", "glca", "pwca"))
    return ImageViT(cfg, torch.Generator().manual_seed(0)).double()


def _images(b: int = 4, seed: int = 2) -> torch.Tensor:
    return torch.rand(b, 6, 6, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_architecture_is_sa_stack_plus_one_glca_block_on_a_cls_token() -> None:
    model = _vit()
    assert [blk.attn.branch for blk in model.body.blocks] == ["sa", "sa"] and model.glca.attn.branch == "glca"
    assert model.cfg.pool == "cls" and model.body.pos.shape[0] == 10  # CLS + 3×3 patches


def test_glca_with_all_tokens_equals_the_sa_block_of_its_weights() -> None:
    """R = N: the GLCA block is one more SA block (its own weights), whatever the rollout says."""
    model, x = _vit(r_ratio=1.0).eval(), _images()
    with torch.no_grad():
        h, _, _ = model._stack(x)
        model.glca.attn.prior_probs = [blk.attn.probs for blk in model.body.blocks]
        glca = model.glca(h)
        model.glca.attn.branch = "sa"
        model.glca.attn.prior_probs = None
        torch.testing.assert_close(glca, model.glca(h))


def test_pwca_is_training_only_and_uses_the_batch_partner() -> None:
    model, x = _vit().eval(), _images()
    with torch.no_grad():
        alone = model(x[:1])
        with_others = model(torch.cat([x[:1], _images(3, seed=9)]))[:1]
    torch.testing.assert_close(alone, with_others)  # evaluation never mixes test examples

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits, targets)

    y = torch.tensor([0, 1, 2, 0])
    model.train()
    model.train_loss(x, y, loss, partner=torch.arange(4))
    sa, _, pwca_self = model.last_terms
    torch.testing.assert_close(pwca_self, sa)  # PWCA with image 2 == image 1 is SA (card invariant)
    model.train_loss(x, y, loss, partner=torch.tensor([1, 2, 3, 0]))
    assert not torch.allclose(model.last_terms[2], sa)  # a real partner changes the PWCA term
    model.pwca = False
    model.train_loss(x, y, loss)
    assert len(model.last_terms) == 2
