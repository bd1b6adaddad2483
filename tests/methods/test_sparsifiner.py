"""Sparsifiner invariants (spec card methods-efficient §8)."""

from __future__ import annotations

import pytest
import torch

from attnbench.impls.sparsifiner import SPEC, budget
from attnbench.layers import build_layer
from attnbench.ops import dense_attention
from attnbench.spec import Workload

C, H, N = 32, 2, 64


def _layer(backend: str = "reference", **params):
    torch.manual_seed(0)
    return build_layer("sparsifiner", backend, C, H, params=params, spatial=(N,)).double()


def _x(seed: int = 1, grad: bool = False) -> torch.Tensor:
    x = torch.randn(2, N, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x.requires_grad_(grad)


def _qkv(m, x):
    return m.qkv(x).view(x.shape[0], N, 3, H, C // H).permute(2, 0, 3, 1, 4)


def test_keep_ratio_one_is_full_attention() -> None:
    m, x = _layer(keep_ratio=1.0), _x()
    q, k, v = _qkv(m, x)
    want = m.proj(dense_attention(q, k, v).transpose(1, 2).reshape(2, N, C))
    torch.testing.assert_close(m(x), want)


@pytest.mark.parametrize("ratio", [0.25, 0.1])
def test_k_keys_per_row_and_full_cls_row(ratio: float) -> None:
    m, x = _layer(keep_ratio=ratio), _x()
    q, k, _ = _qkv(m, x)
    idx, _ = m.predict(q, k)
    kk = budget(N, ratio)
    assert idx.shape == (2, H, N - 1, kk)
    mask = torch.zeros(2, H, N - 1, N, dtype=torch.bool).scatter_(-1, idx, True)
    assert (mask.sum(-1) == kk).all()


def test_gathered_equals_dense_masked_with_grads() -> None:
    x1, x2 = _x(grad=True), _x(grad=True)
    ref, nat = _layer(), _layer("native")
    nat.load_state_dict(ref.state_dict())
    o1, o2 = ref(x1), nat(x2)
    torch.testing.assert_close(o2, o1)
    o1.sum().backward()
    o2.sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad)
    torch.testing.assert_close(nat.qkv.weight.grad, ref.qkv.weight.grad)


def test_task_loss_sends_no_gradient_to_the_predictor() -> None:
    m = _layer().eval()
    m(_x()).sum().backward()
    assert m.aux_loss is None
    for p in (m.proj_c_q.weight, m.proj_c_k.weight, m.proj_n, m.proj_back_n):
        assert p.grad is None
    assert m.qkv.weight.grad is not None


def test_aux_loss_trains_the_predictor() -> None:
    m = _layer().train()
    m(_x())
    assert m.aux_loss is not None and m.aux_loss.dim() == 0
    m.aux_loss.backward()
    assert m.proj_c_q.weight.grad is not None and m.proj_back_n.grad.abs().sum() > 0


def test_flops_and_length_check() -> None:
    w = Workload(batch=1, heads_q=H, heads_kv=H, seq_q=N, seq_kv=N, head_dim=C // H)
    w = SPEC.shape(w, SPEC.params())
    assert w.spatial == (N,)
    f = SPEC.flops(w, SPEC.params())
    attention = 4 * H * (C // H) * (N + (N - 1) * budget(N, 0.25))
    assert attention + 8 * N * C * C < f.useful < f.executed  # + projections, predictor; Â run dense
    with pytest.raises(ValueError, match="built for"):
        _layer()(torch.randn(1, N + 1, C, dtype=torch.float64))


@pytest.mark.parametrize("n,cls", [(49, True), (64, False)])
def test_layer_records_k_keys_per_row_and_at_density_hits_the_target(n: int, cls: bool) -> None:
    from attnbench import density
    from attnbench.impls.sparsifiner import at_density

    w = Workload(seq_q=n, seq_kv=n, spatial=(n,))
    params = SPEC.params({"cls_token": cls})
    ratio = at_density(w, 0.25, params)["keep_ratio"]
    layer = build_layer("sparsifiner", "reference", 16, 2, params={**params, "keep_ratio": ratio}, spatial=(n,)).eval()
    with torch.no_grad(), density.measure() as meter:
        layer(torch.randn(2, n, 16))
    k = budget(n, ratio)
    assert meter.value == pytest.approx((int(cls) * n + (n - int(cls)) * k) / (n * n))
    assert abs(meter.value - 0.25) <= 1 / n  # one key per row
