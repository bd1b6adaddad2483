"""Sparsifiner fused step: gathered sparse attention that computes only the kept (query, key) pairs.

Per chunk of rows it gathers the K selected keys and values (`[B, H, rows, K, D]`), so the work
is O(N·K·D) and the memory O(rows·K·D); the CLS rows attend densely. Its executed FLOPs are
the spec's count (kept pairs, the predictor with its dense Â, projections): `Impl.flops`.
"""

from __future__ import annotations

import torch

from attnbench.impls.sparsifiner import SPEC
from attnbench.ops import dense_attention
from attnbench.registry import register_backend
from attnbench.spec import Backend

_ROWS_PER_CHUNK = 512


@register_backend(SPEC, Backend.NATIVE, flops=SPEC.flops)
def gathered_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor,
                              n_dense: int) -> torch.Tensor:
    """Step: rows `n_dense:` attend to their `idx [B, H, N - n_dense, K]` keys only; fp32 softmax.

    q, k, v: `[B, H, N, D]`. Returns `[B, H, N, D]` in q's dtype.
    """
    b, h, n, d = q.shape
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    out = [dense_attention(q[:, :, :n_dense], k, v)] if n_dense else []
    kf, vf = k.to(acc).reshape(b * h * n, d), v.to(acc).reshape(b * h * n, d)
    flat = idx + (torch.arange(b * h, device=q.device) * n).view(b, h, 1, 1)  # rows of kf / vf
    for r0 in range(0, idx.shape[2], _ROWS_PER_CHUNK):
        rows = flat[:, :, r0:r0 + _ROWS_PER_CHUNK]
        qr = q[:, :, n_dense + r0:n_dense + r0 + rows.shape[2]].to(acc).unsqueeze(-2) * d ** -0.5
        p = torch.softmax(qr @ kf[rows].transpose(-1, -2), dim=-1)  # [B, H, r, 1, K]
        out.append((p @ vf[rows]).squeeze(-2).to(q.dtype))
    return torch.cat(out, dim=2)
