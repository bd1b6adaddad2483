"""AMCL objective (image_cls `objective = "amcl"`): with fixed temperature and one head it is InfoNCE
(SimCLR's NT-Xent); the temperature adapts per pair and learns; several heads average their terms;
the linear probe and the two views."""

from __future__ import annotations

import math

import torch

from attnbench.suites._image_objectives import ContrastiveObjective, info_nce, linear_probe, objective_for, two_views


def _f(seed: int, b: int = 6, d: int = 8) -> torch.Tensor:
    return torch.randn(b, d, generator=torch.Generator().manual_seed(seed))


def _nt_xent_loops(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """Textbook NT-Xent written with explicit loops (independent of `info_nce`)."""
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=-1).tolist()
    n, b, total = len(z), len(z1), 0.0
    for i in range(n):
        sim = [sum(a * c for a, c in zip(z[i], z[j], strict=True)) / tau for j in range(n)]
        pos = (i + b) % n
        denom = sum(math.exp(sim[j]) for j in range(n) if j != i)
        total += -math.log(math.exp(sim[pos]) / denom)
    return total / n


def test_info_nce_is_nt_xent() -> None:
    z1, z2 = _f(1), _f(2)
    assert abs(float(info_nce(z1, z2, 0.3)) - _nt_xent_loops(z1, z2, 0.3)) < 1e-5


def test_fixed_temperature_single_head_reduces_to_info_nce() -> None:
    torch.manual_seed(0)
    amcl = ContrastiveObjective(8, heads=1, adaptive=True, tau=0.2)  # α = β = 0 at initialisation
    f1, f2 = _f(3), _f(4)
    want = info_nce(amcl.heads[0](f1), amcl.heads[0](f2), 0.2)
    torch.testing.assert_close(amcl(f1, f2), want)
    simclr = objective_for("simclr", 8, 4)
    assert len(simclr.heads) == 1 and simclr.alpha is None


def test_temperature_adapts_per_pair_and_learns() -> None:
    torch.manual_seed(0)
    amcl = ContrastiveObjective(8, heads=2, adaptive=True, tau=0.2)
    f1, f2 = _f(5), _f(6)
    base = amcl(f1, f2)
    with torch.no_grad():
        amcl.alpha.fill_(1.5)
    z = torch.nn.functional.normalize(amcl.heads[0](torch.cat([f1, f2])), dim=-1)
    ratio = amcl.log_ratio(z @ z.T, 0)
    assert ratio.std() > 0.05  # different pairs, different temperatures
    loss = amcl(f1, f2)
    assert not torch.allclose(loss, base)
    loss.backward()
    assert amcl.alpha.grad.abs().sum() > 0 and amcl.beta.grad.abs().sum() > 0


def test_heads_average_their_info_nce_terms() -> None:
    torch.manual_seed(0)
    obj = ContrastiveObjective(8, heads=3, adaptive=False, tau=0.5)
    f1, f2 = _f(7), _f(8)
    want = torch.stack([info_nce(h(f1), h(f2), 0.5) for h in obj.heads]).mean()
    torch.testing.assert_close(obj(f1, f2), want)


def test_linear_probe_and_views() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 2
    f = torch.randn(40, 5, generator=g) + 4.0 * y[:, None]
    assert linear_probe(f[:30], y[:30], f[30:], y[30:], 2, steps=100) == 1.0
    x = torch.rand(4, 8, 8, 1, generator=g)
    v1, v2 = two_views(x, 1, g)
    assert v1.shape == x.shape and not torch.equal(v1, v2)
