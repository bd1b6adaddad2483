"""All-gather-KV context parallel.

A generic context-parallel variant (not from the Unified View paper, which does not specify the split):
"A Unified View of Long-Sequence Models towards Modeling
Million-Scale Dependencies" (Hè & Kabic, 2023, arXiv 2302.06218; spec card §13) evaluates a distributed MHA
without saying how it is split.

The method shards Q by sequence, all_gathers K and V (Megatron-style context parallelism) and attends locally with each
query shard's global causal offset (zig-zag shards when causal).
Exact: equals single-device softmax attention. The reference is that dense attention (the oracle); the `native`
backend simulates the P ranks in one process (loop over shards, same merge); the `distributed` suite runs the
real multi-process variant (attnbench.distributed) on `world_size` ranks.
"""

from __future__ import annotations

import torch

from attnbench.distributed import cp_check
from attnbench.flops import dense_flops
from attnbench.ops import causal_mask, dense_attention, dense_kv_cache_bytes
from attnbench.registry import register_method
from attnbench.spec import AttentionSpec, Capabilities, Paper

VARIANT = "allgather_kv"  # attnbench.distributed.VARIANTS key

SPEC = AttentionSpec(
    name="allgather_kv",
    title="All-gather-KV context parallel",
    paper=Paper("A Unified View of Long-Sequence Models towards Modeling Million-Scale Dependencies", 2023,
                "2302.06218"),
    family="distributed",
    defaults={"world_size": 2},
    capabilities=Capabilities(gqa=True),
    flops=dense_flops,
    kv_cache_bytes=dense_kv_cache_bytes,
    check=cp_check(VARIANT),
    claims=("Generic context-parallel variant (not from the Unified View paper, which does not specify the split).",
            "Per rank: O(N²/P) attention compute, 2(P−1)/P·N·D·H_kv·elem bytes sent, full-length K and V held.",
            "Paper headline (weak anchor, baseline unclear): ~40x attention scale-up on four RTX 4090s."),
)


@register_method(SPEC)
def allgather_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                 world_size: int = 2) -> torch.Tensor:
    """Reference: single-process dense attention on the full `[B, H, N, D]` tensors (`world_size` does not
    change the result)."""
    mask = causal_mask(q.shape[-2], k.shape[-2], q.device) if causal else None
    return dense_attention(q, k, v, mask)
