"""Agent attention step as two PyTorch SDPA calls with float bias masks (query lengths n and N)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnbench.impls.agent import SPEC
from attnbench.registry import register_backend
from attnbench.spec import Backend


@register_backend(SPEC, Backend.SDPA)
def agent_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, agents: torch.Tensor, *,
                         agent_bias: torch.Tensor | None = None, query_bias: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """q, k, v `[B, H, N, d]`, agents `[B, H, n, d]`, biases `[H, n, N]` / `[H, N, n]` → `[B, H, N, d]`."""
    def mask(bias: torch.Tensor | None) -> torch.Tensor | None:
        return None if bias is None else bias[None].to(q.dtype)

    agent_v = F.scaled_dot_product_attention(agents, k, v, attn_mask=mask(agent_bias))
    return F.scaled_dot_product_attention(q, agents, agent_v, attn_mask=mask(query_bias))
