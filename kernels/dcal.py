"""Fused DCAL steps: GLCA computes only the CLS row of this block's probabilities (O(N·D)), picks the
top-R tokens, gathers their queries and runs SDPA (`Nq = R`); PWCA is SDPA over concatenated K/V."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnbench.impls.dcal import SPEC, top_local
from attnbench.registry import register_backend
from attnbench.spec import Backend


@register_backend(SPEC, Backend.SDPA)
def dcal_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, r: int = 0,
              rollout: torch.Tensor | None = None, kv2: tuple[torch.Tensor, torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same contract as the reference step (`impls/dcal.py: dcal_step`)."""
    if kv2 is not None:
        return F.scaled_dot_product_attention(q, torch.cat([k, kv2[0]], 2), torch.cat([v, kv2[1]], 2)), None
    if r <= 0:
        return F.scaled_dot_product_attention(q, k, v), None
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    p0 = torch.softmax((q[:, :, :1].to(acc) @ k.to(acc).transpose(-1, -2)) * q.shape[-1] ** -0.5, dim=-1)
    cls_row = 0.5 * p0[:, :, 0].mean(1)  # [B, N]: CLS row of 0.5·mean_h(P) + 0.5·I
    cls_row[:, 0] += 0.5
    if rollout is not None:
        cls_row = (cls_row[:, None, :] @ rollout.to(acc))[:, 0]
    idx = top_local(cls_row, r)
    q_local = q.gather(2, idx[:, None, :, None].expand(-1, q.shape[1], -1, q.shape[-1]))
    return F.scaled_dot_product_attention(q_local, k, v), idx
