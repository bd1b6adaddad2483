"""GEMM-based ("unfused") neighborhood attention: gather each query's Πk keys, then
einsum → softmax → einsum, chunked over queries so memory stays O(chunk·Πk·D).

The paper's GEMM-based NA fuses the gather into the GEMM; here the gather is `index_select`.
The same kernel serves GNA (stride > 1) through `gather_attention`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from attnbench.impls.neighborhood import SPEC, NAConfig, index_table, na_config
from attnbench.registry import register_backend
from attnbench.spec import Backend

CHUNK_BYTES = 32 * 2**20  # gathered K (and V) per chunk


def gather_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor,
                     valid: torch.Tensor | None) -> torch.Tensor:
    """Attention of every query over its own key list.

    Args:
        q: `[B, Hq, N, D]`; k, v: `[B, Hkv, N, D]`.
        idx: `[N, K]` key index per query slot; valid: `[N, K]` or None (all slots valid).
    Returns:
        `[B, Hq, N, D]`.
    """
    b, hq, n, d = q.shape
    hkv, kk = k.shape[1], idx.shape[1]
    g = hq // hkv
    chunk = max(1, CHUNK_BYTES // max(1, b * hkv * kk * d * k.element_size()))
    scale = d**-0.5
    out = []
    for a in range(0, n, chunk):
        rows = idx[a:a + chunk]
        c = rows.shape[0]
        kg = k.index_select(2, rows.flatten()).view(b, hkv, c, kk, d)
        vg = v.index_select(2, rows.flatten()).view(b, hkv, c, kk, d)
        qc = q[:, :, a:a + c].reshape(b, hkv, g, c, d)
        s = torch.einsum("bhgcd,bhckd->bhgck", qc, kg).float() * scale
        if valid is not None:
            s = s.masked_fill(~valid[a:a + c], float("-inf"))
        p = torch.softmax(s, dim=-1).to(v.dtype)
        out.append(torch.einsum("bhgck,bhckd->bhgcd", p, vg).reshape(b, hq, c, d))
    return torch.cat(out, dim=2)


def staged_gather(cfg: NAConfig, device: torch.device) -> Callable[..., torch.Tensor]:
    """Build the index table once; return `(q, k, v) -> o`."""
    if (why := cfg.problem()) is not None:
        raise ValueError(why)
    idx, valid = index_table(cfg, device)
    mask = None if bool(valid.all()) else valid
    return lambda q, k, v: gather_attention(q, k, v, idx, mask)


@register_backend(SPEC, Backend.NATIVE, staged=True)
def neighborhood_gather(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                        kernel_size: int | Sequence[int] = 7, dilation: int | Sequence[int] = 1,
                        is_causal: bool | Sequence[bool] = False, dims: int = 1,
                        spatial: Sequence[int] | None = None) -> Callable[..., Any]:
    """Staged: index table as setup, then the chunked gather-einsum attention."""
    cfg = na_config(q.shape[-2], causal, {"kernel_size": kernel_size, "dilation": dilation,
                                          "is_causal": is_causal, "dims": dims}, spatial)
    return staged_gather(cfg, q.device)
