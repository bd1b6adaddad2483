"""Ring attention (context parallel).

The method sequence-shards Q, K, V over P ranks; P steps pass KV blocks round the ring and merge partial outputs by
log-sum-exp; causal runs use zig-zag sharding (rank r holds chunks r and 2P−1−r) for balanced work.
The family's shared spec, reference and the paper caveat: impls/_context_parallel.py.
"""

from __future__ import annotations

import torch

from attnbench.impls._context_parallel import cp_spec, dense_reference
from attnbench.registry import register_method

VARIANT = "ring_attention"  # attnbench.distributed.VARIANTS key
SPEC = cp_spec("ring_attention", "Ring attention (context parallel)", VARIANT,
               "O(N²/P) attention compute, 2(P−1)/P·N·D·H_kv·elem bytes sent (KV blocks), no full-length KV.")


@register_method(SPEC)
def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                   world_size: int = 2) -> torch.Tensor:
    """Reference: single-process dense attention on the full `[B, H, N, D]` tensors."""
    return dense_reference(q, k, v, causal)
