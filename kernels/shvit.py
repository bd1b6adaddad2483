"""SHViT's single-head step on PyTorch SDPA (D_qk ≠ D_v is fine in the CPU and efficient kernels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnbench.impls.shvit import SPEC
from attnbench.registry import register_backend
from attnbench.spec import Backend


@register_backend(SPEC, Backend.SDPA)
def single_head_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q, k `[B, 1, N, D_qk]`, v `[B, 1, N, C_p]` → `[B, 1, N, C_p]`.

    The fused CPU kernel wants D_qk = D_v (else SDPA takes the math path and stores N×N scores),
    so the narrower side is zero-padded, which is exact: zero q/k columns add 0 to every score and
    zero v columns are sliced off.
    """
    dq, dv = q.shape[-1], v.shape[-1]
    if dq < dv:
        q, k = F.pad(q, (0, dv - dq)), F.pad(k, (0, dv - dq))
    elif dv < dq:
        v = F.pad(v, (0, dq - dv))
    return F.scaled_dot_product_attention(q, k, v, scale=dq ** -0.5)[..., :dv]
