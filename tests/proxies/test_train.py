"""The shared proxy trainer: determinism, budgets, early stopping, aux losses, positions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from attnbench.layers import accepts_rope, build_layer
from attnbench.proxy import data as proxydata
from attnbench.proxy.train import (
    ModelConfig,
    ProxyModel,
    TrainConfig,
    effective_pos,
    predict,
    seed_all,
    token_loss,
    train,
)
from attnbench.registry import METHODS
from attnbench.rope import rotary
from attnbench.spec import Backend, Workload


def _mqar_run(seed: int, steps: int = 6, **tc) -> tuple[list[float], ProxyModel]:
    rng = np.random.default_rng([seed, 0])
    x, y = (torch.from_numpy(a) for a in proxydata.mqar(rng, 64, 64, 32, 4))
    seed_all(seed)
    model = ProxyModel(ModelConfig(method="mha", vocab=64, out_dim=64, d_model=16, n_layers=1, max_len=32))
    losses: list[float] = []

    def loss_fn(m, b):
        loss = token_loss(m, b)
        losses.append(float(loss.detach()))
        return loss

    train(model, lambda s: (x[s % 4 * 16:(s % 4 + 1) * 16], y[s % 4 * 16:(s % 4 + 1) * 16]), loss_fn,
          TrainConfig(steps=steps, lr=3e-3, warmup=2, **tc))
    return losses, model


def test_same_seed_same_numbers_different_seed_different():
    a, ma = _mqar_run(0)
    b, mb = _mqar_run(0)
    c, _ = _mqar_run(1)
    assert a == b
    assert all(torch.equal(p, q) for p, q in zip(ma.parameters(), mb.parameters(), strict=True))
    assert a != c


def test_wall_cap_truncates_and_target_stops_early():
    x = torch.randint(0, 8, (4, 8))
    model = ProxyModel(ModelConfig(method="mha", vocab=8, out_dim=8, d_model=8, n_layers=1))
    res = train(model, lambda s: (x, x), token_loss, TrainConfig(steps=50, lr=1e-3, wall_cap_s=0.0))
    assert res.truncated and res.steps == 1
    assert {r.metric: r.value for r in res.rows()}["truncated"] == 1.0
    res = train(model, lambda s: (x, x), token_loss, TrainConfig(steps=50, lr=1e-3, eval_every=3, target=0.5),
                eval_fn=lambda m: 1.0)
    assert res.stopped_early and not res.truncated and res.steps == 3 and res.evals == [(3, 1.0)]
    res = train(model, lambda s: (x, x), token_loss, TrainConfig(steps=30, lr=1e-3, loss_target=1e9))
    assert res.stopped_early and res.steps == 20


def test_lr_schedule_warmup_then_cosine():
    tc = TrainConfig(steps=100, lr=1.0, warmup=10, schedule_steps=110)
    assert tc.lr_at(0) == pytest.approx(0.1) and tc.lr_at(9) == pytest.approx(1.0)
    assert tc.lr_at(60) == pytest.approx(0.5) and tc.lr_at(110) == pytest.approx(0.0, abs=1e-12)
    assert TrainConfig(steps=5, lr=2.0).lr_at(3) == 2.0


class _AuxAttention(nn.Module):
    """Identity attention whose aux loss pulls an otherwise unused parameter to zero."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.ones(()))
        self.aux_loss = None

    def forward(self, x):
        self.aux_loss = self.p ** 2
        return torch.zeros_like(x)


def test_aux_losses_are_added():
    model = ProxyModel(ModelConfig(method="mha", vocab=8, out_dim=8, d_model=8, n_layers=2),
                       make_attn=lambda i: _AuxAttention())
    x = torch.randint(0, 8, (4, 8))
    train(model, lambda s: (x, x), token_loss, TrainConfig(steps=20, lr=0.05, grad_clip=None))
    assert all(abs(b.attn.p.item()) < 0.5 for b in model.blocks)


def test_rope_scores_depend_only_on_offset():
    q, k = torch.randn(1, 1, 1, 8).expand(1, 1, 12, 8), torch.randn(1, 1, 1, 8).expand(1, 1, 12, 8)
    qr, kr = rotary(q)[0, 0], rotary(k)[0, 0]
    s = (qr * kr).sum(-1)
    assert torch.allclose(s, s[0].expand(12), atol=1e-5)  # same offset 0 at every position
    assert torch.allclose(qr[5] @ kr[2], qr[9] @ kr[6], atol=1e-5)
    assert torch.allclose(rotary(q, offset=4)[0, 0, :3], qr[4:7], atol=1e-6)  # decode offsets
    assert torch.equal(rotary(q[:, :, :1]), q[:, :, :1])  # position 0 is not rotated


def test_rope_model_is_translation_aware_and_runs():
    cfg = ModelConfig(method="mha", vocab=16, out_dim=16, d_model=16, n_heads=2, n_layers=1, pos="rope")
    model = ProxyModel(cfg)
    assert model.pos is None and model.blocks[0].attn.rope
    out = model(torch.randint(0, 16, (2, 10)))
    assert out.shape == (2, 10, 16)
    with pytest.raises(ValueError, match="even head dim"):
        ProxyModel(ModelConfig(method="mha", vocab=4, out_dim=4, d_model=6, n_heads=2, pos="rope"))


ROPE_LAYERS = [e.name for e in METHODS if e.spec.kind == "layer" and accepts_rope(e)]


@pytest.mark.parametrize("method", ROPE_LAYERS)
def test_layer_methods_with_rope(method):
    """A layer method's `rope` flag: position 0 unrotated, later positions rotated, every backend
    agrees with the reference, and it is the scheme the proxies then train with."""
    entry = METHODS.get(method)
    x = torch.randn(2, 12, 32, dtype=torch.float64)

    def build(backend: Backend, rope: bool) -> torch.nn.Module:
        torch.manual_seed(0)
        return build_layer(method, backend, 32, 4, causal=True, rope=rope).double()

    plain, rot = build(Backend.REFERENCE, False), build(Backend.REFERENCE, True)
    with torch.no_grad():
        y, y_rot = plain(x), rot(x)
        torch.testing.assert_close(y_rot[:, :1], y[:, :1])  # causal: token 0 sees itself at offset 0
        assert not torch.allclose(y_rot[:, 1:], y[:, 1:])
        w = Workload(batch=2, heads_q=4, heads_kv=4, seq_q=12, seq_kv=12, head_dim=8, dtype="float64", causal=True)
        params = entry.spec.params({})
        for backend in set(entry.impls) - {Backend.REFERENCE, Backend.FLEX_COMPILED}:  # compiling is slow
            if entry.why_not(backend, entry.spec.shape(w, params), params) is None:
                torch.testing.assert_close(build(backend, True)(x), y_rot, rtol=1e-6, atol=1e-6)
    assert effective_pos(entry, "rope") == ("rope", "")


def test_layer_methods_without_a_rope_flag_train_without_positions():
    no_rope = [e.name for e in METHODS if e.spec.kind == "layer" and not accepts_rope(e)]
    if not no_rope:
        pytest.skip("every layer method takes rope")
    assert effective_pos(METHODS.get(no_rope[0]), "rope")[0] == "none"
    with pytest.raises(ValueError, match="no RoPE hook"):
        build_layer(no_rope[0], Backend.REFERENCE, 32, 4, rope=True)


def test_effective_pos_and_config_validation():
    assert effective_pos(METHODS.get("mha"), "rope") == ("rope", "")
    with pytest.raises(ValueError, match="positional scheme"):
        ModelConfig(method="mha", vocab=4, out_dim=4, pos="alibi")
    with pytest.raises(ValueError, match="exactly one"):
        ModelConfig(method="mha", out_dim=4)


def test_predict_only_feeds_full_batches():
    seen = []

    def model(x):
        seen.append(len(x))
        return x * 2

    x = torch.arange(10.0)[:, None]
    out = predict(model, x, 4)
    assert seen == [4, 4, 4] and torch.equal(out, x * 2)


def _lm(method: str, **kw) -> ProxyModel:
    torch.manual_seed(0)
    return ProxyModel(ModelConfig(method=method, vocab=16, out_dim=16, d_model=16, n_heads=2, max_len=12, **kw))


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_all_mha_plan_equals_the_mha_model(pos: str):
    """Invariant of the model plan: a hybrid whose layers are all `mha` is the MHA model."""
    x = torch.randint(0, 16, (2, 12), generator=torch.Generator().manual_seed(1))
    want = _lm("mha", n_layers=3, pos=pos)(x)
    torch.testing.assert_close(_lm("mha", layers=("mha",) * 3, pos=pos)(x), want)
    torch.testing.assert_close(_lm("decon_hybrid_mlp", layers=("mha",) * 3, pos=pos)(x), want)
    assert not torch.allclose(_lm("decon_hybrid_mlp", n_layers=3, pos=pos)(x), want)


def test_plan_sets_the_depth_and_builds_each_layer():
    model = _lm("decon_mlp", layers=("decon_mlp", "mha", "mha", "decon_mlp"), pos="rope")
    assert model.cfg.n_layers == 4 and model.plan == ("decon_mlp", "mha", "mha", "decon_mlp")
    kinds = [type(b.attn).__name__ for b in model.blocks]
    assert kinds == ["GatedMLP", "AttentionLayer", "AttentionLayer", "GatedMLP"]
    assert model.blocks[1].attn.rope  # RoPE where a layer takes it, none in the MLP layers
    assert model(torch.randint(0, 16, (2, 12))).shape == (2, 12, 16)
    with pytest.raises(ValueError, match="at least one"):
        ModelConfig(method="mha", vocab=4, out_dim=4, layers=())


def test_effective_pos_of_hybrids():
    assert effective_pos(METHODS.get("decon_hybrid_mlp"), "rope") == (
        "rope", "hybrid: RoPE in the layers that take it, none in the others")
    assert effective_pos(METHODS.get("decon_mlp"), "rope")[0] == "none"
    assert effective_pos(METHODS.get("decon_hybrid_mlp"), "learned") == ("learned", "")
