"""All-gather-KV context parallel, single process: the P ranks simulated as a loop over shards
(attnbench.distributed.simulate).

The honest single-device path of the variant; the real multi-process run is the `distributed` suite's.
"""

from __future__ import annotations

import torch

from attnbench.distributed import simulate
from attnbench.impls.allgather_kv import SPEC, VARIANT
from attnbench.registry import register_backend
from attnbench.spec import Backend


@register_backend(SPEC, Backend.NATIVE)
def allgather_kv_simulated(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                           world_size: int = 2) -> torch.Tensor:
    """`world_size` ranks of the variant, one after another, on full `[B, H, N, D]` tensors."""
    return simulate(VARIANT, q, k, v, causal=causal, world=world_size)
