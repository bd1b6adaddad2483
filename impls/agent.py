"""Agent Attention: On the Integration of Softmax and Linear Attention — Han et al., ECCV 2024,
arXiv 2312.08874. n agent tokens pooled from the queries first aggregate the values (softmax over
keys), then broadcast them back (softmax of the queries over agents): O(N·n) instead of O(N²).
`agent_num = 0` (the default) scales n to the grid by the paper's Agent-DeiT ratio (49 agents for 196
tokens): the largest square ≤ N/4, at most 49, so n ≪ N (49 agents on a 7×7 grid would be quadratic).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.flops import SOFTMAX_FLOPS_PER_SCORE
from attnbench.impls.spectformer import grid_of
from attnbench.ops import dense_attention
from attnbench.registry import register_method, step
from attnbench.spec import AttentionSpec, Backend, Capabilities, FlopCount, Paper, Params, Workload


def adapt(w: Workload, params: Params) -> Workload:
    """A 1-D workload runs on the most square 2-D grid of its length."""
    return w if w.spatial is not None else w.replace(spatial=grid_of(w.seq_q))


AGENT_RATIO = 49 / 196  # Agent-DeiT: 49 agents for the 14×14 tokens of a 224-px image, patch 16
MAX_AGENTS = 49  # the paper's largest agent count (Agent-DeiT, later Agent-Swin/PVT stages)


def agents_for(n_tokens: int, agent_num: int = 0) -> int:
    """The agent count: `agent_num` when set, else the largest square ≤ N·49/196, in [1, 49]."""
    if agent_num:
        return agent_num
    side = max(1, math.isqrt(int(n_tokens * AGENT_RATIO)))
    return min(side * side, MAX_AGENTS)


def check(w: Workload, params: Params) -> str | None:
    n = agents_for(w.seq_q, params["agent_num"])
    if math.isqrt(n) ** 2 != n:
        return f"agent_num={n} must be a square (agents are pooled on a √n×√n grid)"
    if n > w.seq_q:
        return f"agent_num={n} exceeds the {w.seq_q} tokens"
    return None


def agent_flops(w: Workload, params: Params) -> FlopCount:
    """Card §7: 8·B·H·N·n·d (two attentions) + pool B·N·C + DWC 18·B·N·C + qkv/proj 8·B·N·C²."""
    n, c = w.seq_q, w.d_model
    a = agents_for(n, params["agent_num"])
    core = 8.0 * w.heads_q * n * a * w.head_dim
    dwc = 18.0 * n * c if params["dwc"] else 0.0
    useful = w.batch * (core + n * c + dwc + 8.0 * n * c * c)
    softmax = SOFTMAX_FLOPS_PER_SCORE * w.batch * w.heads_q * 2 * n * a
    return FlopCount(useful=useful, executed=useful, softmax=softmax)


SPEC = AttentionSpec(
    name="agent",
    title="Agent attention",
    paper=Paper("Agent Attention: On the Integration of Softmax and Linear Attention", 2024, "2312.08874"),
    family="linear",
    kind="layer",
    defaults={"agent_num": 0, "agent_bias": True, "dwc": True, "bias_table": 7},
    capabilities=Capabilities(causal=False, noncausal=True, gqa=False, dims=(2,)),
    flops=agent_flops,
    adapt=adapt,
    check=check,
    claims=("Agent-DeiT-T 74.9% top-1 (DeiT-T 72.2%); Agent-Swin-T 82.6% (81.3%).",
            "AgentSD (training-free on ToMeSD): up to 1.84× faster, 2.59× less memory."),
)


def agent_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, agents: torch.Tensor, *,
                    agent_bias: torch.Tensor | None = None, query_bias: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """Reference step: agent aggregation, then agent broadcast (scale d^-1/2 in both softmaxes).

    Args:
        q, k, v: `[B, H, N, d]`; agents: `[B, H, n, d]`.
        agent_bias: additive `[H, n, N]` (agents → keys); query_bias: `[H, N, n]` (queries → agents).
    Returns:
        `[B, H, N, d]`.
    """
    agent_v = dense_attention(agents, k, v, bias=agent_bias)  # V_A = softmax(A Kᵀ s + B1) V
    return dense_attention(q, agents, agent_v, bias=query_bias)  # O = softmax(Q Aᵀ s + B2) V_A


class AgentAttention(nn.Module):
    """Agent attention layer on `x [B, N, C]` over the token grid `spatial = (h, w)`.

    Args:
        d_model: C. n_heads: H. agent_num: n (a square; 0 = scaled to the grid, see `agents_for`).
        agent_bias: the position biases (a `bias_table`² table per (head, agent), bilinearly resized
            to the grid, plus row and column terms). dwc: the 3×3 depthwise conv on V.
        spatial: the token grid (required for the row/column biases and the conv).
    """

    def __init__(self, d_model: int, n_heads: int, *, backend: Backend | str, causal: bool = False,
                 spatial: tuple[int, ...] | None = None, agent_num: int = 0, agent_bias: bool = True,
                 dwc: bool = True, bias_table: int = 7) -> None:
        super().__init__()
        if spatial is not None and len(spatial) == 2:
            agent_num = agents_for(int(spatial[0]) * int(spatial[1]), agent_num)
        if causal:
            raise ValueError("agent attention has no causal form (agents pool every query)")
        if spatial is None or len(spatial) != 2:
            raise ValueError(f"agent attention needs a 2-D token grid `spatial=(h, w)`, got {spatial}")
        if d_model % n_heads or math.isqrt(agent_num) ** 2 != agent_num:
            raise ValueError(f"agent: need n_heads | d_model and a square agent_num, got {agent_num}")
        self.h, self.w = int(spatial[0]), int(spatial[1])
        self.n_heads, self.head_dim, self.agent_num = n_heads, d_model // n_heads, agent_num
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dwc = nn.Conv2d(d_model, d_model, 3, padding=1, groups=d_model) if dwc else None
        if agent_bias:
            hn, t = (n_heads, agent_num), bias_table
            self.an_table = nn.Parameter(torch.randn(*hn, t, t) * 0.02)  # agents → keys
            self.na_table = nn.Parameter(torch.randn(*hn, t, t) * 0.02)  # queries → agents
            self.ah = nn.Parameter(torch.randn(*hn, self.h, 1) * 0.02)
            self.aw = nn.Parameter(torch.randn(*hn, 1, self.w) * 0.02)
            self.ha = nn.Parameter(torch.randn(n_heads, self.h, 1, agent_num) * 0.02)
            self.wa = nn.Parameter(torch.randn(n_heads, 1, self.w, agent_num) * 0.02)
        self.use_bias = agent_bias
        self.aux_loss: torch.Tensor | None = None
        self.attend = agent_attention if Backend(backend) is Backend.REFERENCE else step(SPEC, backend)

    def biases(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B1 `[H, n, N]`, B2 `[H, N, n]`): resized tables plus row/column terms."""
        def resize(t: torch.Tensor) -> torch.Tensor:
            return F.interpolate(t, size=(self.h, self.w), mode="bilinear", align_corners=False)

        b1 = (resize(self.an_table) + self.ah + self.aw).flatten(2)
        b2 = resize(self.na_table).flatten(2).transpose(1, 2) + (self.ha + self.wa).flatten(1, 2)
        return b1, b2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x [B, N, C]` → `[B, N, C]`."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        side = math.isqrt(self.agent_num)
        grid = q.transpose(1, 2).reshape(b, c, self.h, self.w)
        agents = F.adaptive_avg_pool2d(grid, (side, side)).flatten(2).transpose(1, 2)  # [B, n, C]

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (self.n_heads, self.head_dim)).transpose(1, 2)

        b1, b2 = self.biases() if self.use_bias else (None, None)
        o = self.attend(heads(q), heads(k), heads(v), heads(agents), agent_bias=b1, query_bias=b2)
        o = o.transpose(1, 2).reshape(b, n, c)
        if self.dwc is not None:
            o = o + self.dwc(v.transpose(1, 2).reshape(b, c, self.h, self.w)).flatten(2).transpose(1, 2)
        return self.proj(o)


@register_method(SPEC)
def agent(d_model: int, n_heads: int, *, backend: Backend | str, causal: bool = False,
          spatial: tuple[int, ...] | None = None, agent_num: int = 0, agent_bias: bool = True,
          dwc: bool = True, bias_table: int = 7) -> AgentAttention:
    """Build an agent attention layer for the token grid `spatial`."""
    return AgentAttention(d_model, n_heads, backend=backend, causal=causal, spatial=spatial,
                          agent_num=agent_num, agent_bias=agent_bias, dwc=dwc, bias_table=bias_table)
