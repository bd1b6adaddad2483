"""Sparsifiner fused step: gathered sparse attention that computes only the kept (query, key) pairs.

Per chunk of rows it gathers the K selected keys and values (`[B, H, rows, K, D]`), so the work
is O(N·K·D) and the memory O(rows·K·D); the CLS rows attend densely.
"""

from __future__ import annotations

import torch
from attnbench.impls.mha import dense_attention
from attnbench.impls.sparsifiner import SPEC

from attnbench.registry import register_backend
from attnbench.spec import Backend

_ROWS_PER_CHUNK = 512


def _gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """`x [B, H, N, D]`, `idx [B, H, R, K]` → `[B, H, R, K, D]`."""
    b, h, r, kk = idx.shape
    src = x[:, :, None].expand(b, h, r, x.shape[2], x.shape[3])
    return src.gather(3, idx[..., None].expand(b, h, r, kk, x.shape[3]))


@register_backend(SPEC, Backend.NATIVE)
def gathered_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor,
                              n_dense: int) -> torch.Tensor:
    """Step: rows `n_dense:` attend to their `idx [B, H, N - n_dense, K]` keys only; fp32 softmax.

    q, k, v: `[B, H, N, D]`. Returns `[B, H, N, D]` in q's dtype.
    """
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = q.shape[-1] ** -0.5
    out = [dense_attention(q[:, :, :n_dense], k, v)] if n_dense else []
    kf, vf = k.to(acc), v.to(acc)
    for r0 in range(0, idx.shape[2], _ROWS_PER_CHUNK):
        rows = idx[:, :, r0:r0 + _ROWS_PER_CHUNK]
        qr = q[:, :, n_dense + r0:n_dense + r0 + rows.shape[2]].to(acc)
        s = torch.einsum("bhrd,bhrkd->bhrk", qr, _gather_rows(kf, rows)) * scale
        p = torch.softmax(s, dim=-1)
        out.append(torch.einsum("bhrk,bhrkd->bhrd", p, _gather_rows(vf, rows)).to(q.dtype))
    return torch.cat(out, dim=2)
