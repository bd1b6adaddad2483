"""Head-parallel all-to-all (Ulysses-style).

The method takes sequence shards, all-to-alls them into head shards (H/P query and H_kv/P kv heads, full sequence),
runs full-sequence attention and all-to-alls the output back. Needs H and H_kv divisible by P.
The family's shared spec, reference and the paper caveat: impls/_context_parallel.py.
"""

from __future__ import annotations

import torch

from attnbench.impls._context_parallel import cp_spec, dense_reference
from attnbench.registry import register_method

VARIANT = "ulysses"  # attnbench.distributed.VARIANTS key
SPEC = cp_spec("ulysses", "Head-parallel all-to-all (Ulysses-style)", VARIANT,
               "O(N²/P) attention compute, (P−1)/P²·N·D·(2H + 2H_kv)·elem bytes sent (q, k, v in, out back).")


@register_method(SPEC)
def ulysses(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
            world_size: int = 2) -> torch.Tensor:
    """Reference: single-process dense attention on the full `[B, H, N, D]` tensors."""
    return dense_reference(q, k, v, causal)
