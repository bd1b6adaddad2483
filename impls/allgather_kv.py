"""All-gather-KV context parallel.

The method shards Q by sequence, all_gathers K and V (Megatron-style context parallelism) and attends locally with each
query shard's global causal offset (zig-zag shards when causal).
The family's shared spec, reference and the paper caveat: impls/_context_parallel.py.
"""

from __future__ import annotations

import torch

from attnbench.impls._context_parallel import cp_spec, dense_reference
from attnbench.registry import register_method

VARIANT = "allgather_kv"  # attnbench.distributed.VARIANTS key
SPEC = cp_spec("allgather_kv", "All-gather-KV context parallel", VARIANT,
               "O(N²/P) attention compute, 2(P−1)/P·N·D·H_kv·elem bytes sent, full-length K and V held.")


@register_method(SPEC)
def allgather_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                 world_size: int = 2) -> torch.Tensor:
    """Reference: single-process dense attention on the full `[B, H, N, D]` tensors."""
    return dense_reference(q, k, v, causal)
