"""CCA's latent attention step on PyTorch SDPA (causal GQA through `enable_gqa`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnbench.impls.cca import SPEC
from attnbench.registry import register_backend
from attnbench.spec import Backend


@register_backend(SPEC, Backend.SDPA)
def latent_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False
                          ) -> torch.Tensor:
    """`[B, H_q, N, d_h]` q with `[B, H_kv, N, d_h]` k, v → `[B, H_q, N, d_h]`.

    The conv output reaches here with a strided last dim; the fused CPU kernel needs unit stride
    (otherwise SDPA falls back to the math path, which materialises the N×N scores).
    """
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=q.shape[1] != k.shape[1])
