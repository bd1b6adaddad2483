"""Agent attention invariants (spec card methods-efficient §7; bias and DWC off where the card says)."""

from __future__ import annotations

import pytest
import torch

import attnbench.kernels.agent  # registers agent and its SDPA step
from attnbench.flops import counted_flops
from attnbench.impls.agent import SPEC, agent_attention, agent_flops
from attnbench.layers import build_layer
from attnbench.ops import dense_attention
from attnbench.spec import Workload

C, H, GRID = 16, 2, (6, 8)
N = GRID[0] * GRID[1]
PLAIN = {"agent_bias": False, "dwc": False}


def _layer(backend: str = "reference", **params):
    torch.manual_seed(0)
    return build_layer("agent", backend, C, H, params={"agent_num": 16, **params}, spatial=GRID).double()


def _rand(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("params", [{}, PLAIN])
def test_sdpa_matches_reference(params: dict) -> None:
    x = _rand(2, N, C)
    torch.testing.assert_close(_layer("sdpa", **params)(x), _layer(**params)(x))


def test_two_stage_is_row_stochastic_and_associative() -> None:
    q, k, v = (_rand(2, H, N, 8, seed=s) for s in (1, 2, 3))
    a = _rand(2, H, 9, 8, seed=4)
    s = 8 ** -0.5
    phi_q = torch.softmax(q @ a.transpose(-1, -2) * s, -1)
    phi_k = torch.softmax(a @ k.transpose(-1, -2) * s, -1)
    mixed = phi_q @ phi_k
    torch.testing.assert_close(mixed.sum(-1), torch.ones_like(mixed[..., 0]))
    torch.testing.assert_close(agent_attention(q, k, v, a), mixed @ v)  # (φ_q φ_kᵀ) V == φ_q (φ_kᵀ V)
    const = torch.full_like(v, 0.7)
    for step in (agent_attention, attnbench.kernels.agent.agent_attention_sdpa):
        torch.testing.assert_close(step(q, k, const, a), torch.full_like(q, 0.7))


def test_one_agent_gives_the_same_output_for_every_query() -> None:
    y = _layer(agent_num=1, **PLAIN)(_rand(2, N, C))
    torch.testing.assert_close(y, y[:, :1].expand_as(y))


def test_agents_equal_queries_with_sharp_broadcast_is_softmax_attention() -> None:
    q = torch.nn.functional.normalize(_rand(1, H, N, 8), dim=-1)  # distinct unit rows
    k, v = _rand(1, H, N, 8, seed=2), _rand(1, H, N, 8, seed=3)
    sharp = agent_attention(q * 1e4, k, v, q)  # q only enters the broadcast softmax
    torch.testing.assert_close(sharp, dense_attention(q, k, v))


def test_flops_formula_matches_counter() -> None:
    params = SPEC.params({"agent_num": 16})
    w = SPEC.shape(Workload(batch=2, heads_q=H, heads_kv=H, seq_q=N, seq_kv=N, head_dim=C // H), params)
    assert w.spatial == GRID
    torch.manual_seed(0)
    layer = build_layer("agent", "sdpa", C, H, params=params, spatial=GRID)
    counted = counted_flops(lambda: layer(torch.randn(2, N, C)))
    # the counter does not see the adaptive average pool (B·N·C adds)
    assert counted == pytest.approx(agent_flops(w, params).useful - 2 * N * C)


def test_agent_count_scales_with_the_grid_by_the_papers_ratio() -> None:
    from attnbench.impls.agent import agents_for

    assert agents_for(14 * 14) == 49  # Agent-DeiT-T: 49 agents for 196 tokens
    assert agents_for(7 * 7) == 9  # n ≪ N on the image proxy's 7×7 grid (not 49: the quadratic regime)
    assert agents_for(64 * 64) == 49 and agents_for(4) == 1 and agents_for(49, 16) == 16
    torch.manual_seed(0)
    assert build_layer("agent", "reference", C, H, spatial=(7, 7)).agent_num == 9
    w = Workload(batch=1, heads_q=H, heads_kv=H, seq_q=49, seq_kv=49, head_dim=C // H, spatial=(7, 7))
    assert agent_flops(w, SPEC.params()).useful == agent_flops(w, SPEC.params({"agent_num": 9})).useful
