"""ACMIL invariants (spec card methods-modeling A7): M=1, K=0 ⇒ ABMIL; eval / p=0 ⇒ no masking;
masked instances get exactly 0 weight, rows sum to 1, at most ⌊K·p⌋ masked per row; FLOPs."""

from __future__ import annotations

import pytest
import torch

import attnbench.kernels.acmil as kacmil
from attnbench.impls.acmil import SPEC, acmil_flops, acmil_pool, diversity_loss, stkim_mask
from attnbench.layers import build_layer
from attnbench.spec import Workload

C, N = 32, 40


def _layer(backend: str = "reference", **params):
    torch.manual_seed(0)
    return build_layer("acmil", backend, C, 4, params=params).double()


def _x() -> torch.Tensor:
    return torch.randn(2, N, C, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_one_branch_no_masking_is_abmil() -> None:
    layer, x = _layer(n_branches=1, top_k=0).train(), _x()
    out = layer(x)
    xr = layer.reduce(x)
    gate = torch.tanh(layer.att_v(xr)) * torch.sigmoid(layer.att_u(xr))
    a = torch.softmax(layer.att_w(gate)[..., 0], dim=-1)  # gated-attention MIL pooling
    z = (a[..., None] * xr).sum(1)
    torch.testing.assert_close(out.mean(1), z)
    torch.testing.assert_close(layer.branch_features[:, 0], z)
    assert float(layer.aux_loss) == 0.0


def test_eval_and_zero_probability_do_not_mask() -> None:
    x = _x()
    ev = _layer().eval()
    first = ev(x), ev.branch_features
    torch.manual_seed(7)
    torch.testing.assert_close((ev(x), ev.branch_features), first)
    no_mask = _layer(mask_prob=0.0).train()
    torch.testing.assert_close(no_mask(x), first[0])
    torch.testing.assert_close(no_mask.branch_features, first[1])
    trained = _layer().train()
    trained(x)
    assert not torch.allclose(trained.branch_features, first[1])  # masking changes the branches


def test_masking_rules() -> None:
    scores = torch.randn(3, 5, N, dtype=torch.float64)
    noise = torch.rand(3, 5, 10, generator=torch.Generator().manual_seed(2))
    masked = stkim_mask(scores, noise, top_k=10, mask_prob=0.6)
    assert (masked.sum(-1) == 6).all()  # ⌊10·0.6⌋ per row
    top = scores.topk(10, dim=-1).indices
    assert masked.gather(-1, top).sum() == masked.sum()  # only top-K instances are masked
    probs = acmil_pool(scores, noise, top_k=10, mask_prob=0.6)
    assert (probs[masked] == 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 5, dtype=torch.float64))
    native = kacmil.acmil_pool_native(scores, noise, top_k=10, mask_prob=0.6)
    torch.testing.assert_close(native, probs)


def test_diversity_loss_bounds() -> None:
    same = torch.softmax(torch.randn(1, 1, N), -1).expand(2, 4, N)
    torch.testing.assert_close(diversity_loss(same), torch.tensor(1.0))
    disjoint = torch.eye(4)[None]  # one-hot on different instances
    assert float(diversity_loss(disjoint)) == 0.0


def test_flops() -> None:
    w = Workload(batch=1, heads_q=4, heads_kv=4, seq_q=N, seq_kv=N, head_dim=8)
    p = SPEC.params()
    want = 2 * N * C * C + 4 * N * C * 128 + 2 * N * 128 * 5 + 2 * 5 * N * C + 2 * N * C
    assert acmil_flops(w, p).useful == want


# -- STKIM active in training: the branch classifiers and the bag weights see the masked attention ----
def _branch_loss(layer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    layer(x)
    logits = layer.branch_logits
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.repeat_interleave(logits.shape[1]))
    return ce + layer.aux_loss


def test_branch_masks_change_the_training_loss() -> None:
    x, y = _x(), torch.tensor([0, 1])
    masked, plain = _layer(n_classes=2).train(), _layer(n_classes=2, mask_prob=0.0).train()
    torch.manual_seed(3)
    with_masks = _branch_loss(masked, x, y)
    without = _branch_loss(plain, x, y)
    assert not torch.allclose(with_masks, without)  # STKIM reaches the loss
    torch.testing.assert_close(without, _branch_loss(plain.eval(), x, y))  # p = 0: training == evaluation
    torch.testing.assert_close(_branch_loss(masked.eval(), x, y), without)  # evaluation never masks


def test_masked_instances_get_no_weight_and_no_gradient() -> None:
    layer = _layer(n_branches=1, top_k=8, mask_prob=0.5, n_classes=2).train()
    x = _x().requires_grad_(True)
    torch.manual_seed(11)
    loss = _branch_loss(layer, x, torch.tensor([1, 0]))
    loss.backward()
    with torch.no_grad():
        scores = layer.scores(layer.reduce(x))
        torch.manual_seed(11)
        noise = torch.rand(2, 1, 8)
        gone = stkim_mask(scores, noise, top_k=8, mask_prob=0.5)[:, 0]  # [B, N]
    assert int(gone.sum()) == 2 * 4
    assert (layer.bag_weights[gone] == 0).all()  # the slide weights are the masked ones (official ACMIL_GA)
    assert (x.grad[gone] == 0).all() and (x.grad[~gone].abs().sum(-1) > 0).all()


@pytest.mark.parametrize("backend", ["native"])
def test_fused_layer_matches_reference_in_training(backend: str) -> None:
    x, y = _x(), torch.tensor([1, 0])
    outs = []
    for b in ("reference", backend):
        layer = _layer(b, n_classes=3).train()
        xb = x.clone().requires_grad_(True)
        torch.manual_seed(5)
        out = layer(xb)
        loss = out.sum() + torch.nn.functional.cross_entropy(layer.branch_logits[:, 0], y) + layer.aux_loss
        loss.backward()
        outs.append((out, layer.branch_logits, layer.aux_loss, xb.grad, layer.att_w.weight.grad))
    for got, want in zip(outs[1], outs[0], strict=True):
        torch.testing.assert_close(got, want)
