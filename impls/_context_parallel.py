"""What the three context-parallel methods (ring_attention, allgather_kv, ulysses) share: their spec and the
single-process reference.

They are generic variants, not from "A Unified View of Long-Sequence Models towards Modeling Million-Scale
Dependencies" (Hè & Kabic, 2023, arXiv 2302.06218; spec card §13), which evaluates a distributed MHA without saying
how it is split. Each is exact: it equals single-device softmax attention, so the reference is that dense attention
(the oracle); the `native` backend simulates the P ranks in one process (loop over shards, same merge), and the
`distributed` suite runs the real multi-process variant (attnbench.distributed) on `world_size` ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from attnbench.distributed import ulysses_check
from attnbench.flops import dense_flops
from attnbench.ops import causal_mask, dense_attention, dense_kv_cache_bytes
from attnbench.spec import AttentionSpec, Capabilities, Paper

PAPER = Paper("A Unified View of Long-Sequence Models towards Modeling Million-Scale Dependencies", 2023,
              "2302.06218")
GENERIC = "Generic context-parallel variant (not from the Unified View paper, which does not specify the split)."
HEADLINE = "Paper headline (weak anchor, baseline unclear): ~40x attention scale-up on four RTX 4090s."


def cp_check(method: str) -> Callable[[Any, Any], str | None]:
    """A spec `check` for a context-parallel method: self-attention, world_size ≥ 1 (Ulysses: divisible heads)."""
    def check(w: Any, params: Any) -> str | None:
        p = params["world_size"]
        if not isinstance(p, int) or p < 1:
            return f"world_size must be a positive integer, got {p!r}"
        if w.seq_q != w.seq_kv:
            return "context-parallel attention shards one sequence: needs seq_q == seq_kv"
        return ulysses_check(w.heads_q, w.heads_kv, p) if method == "ulysses" else None
    return check


def cp_spec(name: str, title: str, variant: str, per_rank: str) -> AttentionSpec:
    """The spec of one context-parallel method; `variant` is its attnbench.distributed.VARIANTS key."""
    return AttentionSpec(name=name, title=title, paper=PAPER, family="distributed", defaults={"world_size": 2},
                         capabilities=Capabilities(gqa=True), flops=dense_flops, kv_cache_bytes=dense_kv_cache_bytes,
                         check=cp_check(variant), claims=(GENERIC, f"Per rank: {per_rank}", HEADLINE))


def dense_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """Single-process dense attention on the full `[B, H, N, D]` tensors (`world_size` does not change it)."""
    mask = causal_mask(q.shape[-2], k.shape[-2], q.device) if causal else None
    return dense_attention(q, k, v, mask)
