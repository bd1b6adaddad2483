"""Toy banded attention — an out-of-tree attnbench method (test fixture for the plugin route).

Registered through the `attnbench.methods` entry point (see `../attnbench_toy-0.1.dist-info/`), it
imports only public API: `attnbench.registry`, `attnbench.spec`, `attnbench.ops`, `attnbench.flops`.

Query i sits at key position p = i + Nk − Nq (bottom-right aligned) and sees the keys j with
- causal: `p − window < j ≤ p` (the `window` keys ending at p);
- non-causal: `|p − j| < window` (a band of `2·window − 1` keys centred on p).
The local-window pattern is Longformer's; `window` here is a toy default sized for smoke shapes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from attnbench.flops import mask_flops
from attnbench.ops import dense_attention, dense_kv_cache_bytes
from attnbench.registry import register_backend, register_method
from attnbench.spec import AttentionSpec, Backend, Capabilities, FlopCount, Paper, Params, Workload


def band(q_idx: torch.Tensor, kv_idx: torch.Tensor, *, window: int, causal: bool, offset: int) -> torch.Tensor:
    """True where key `kv_idx` is in the band of query `q_idx` (broadcasting; also a flex mask_mod body)."""
    d = q_idx + offset - kv_idx
    return (d >= 0) & (d < window) if causal else d.abs() < window


def band_mask(nq: int, nk: int, *, window: int, causal: bool, device: torch.device | str = "cpu") -> torch.Tensor:
    """`[Nq, Nk]` boolean band mask."""
    i = torch.arange(nq, device=device)[:, None]
    j = torch.arange(nk, device=device)[None, :]
    return band(i, j, window=window, causal=causal, offset=nk - nq)


def band_mask_mod(w: Workload, params: Params) -> Callable[..., torch.Tensor]:
    """FlexAttention mask_mod of the band for `w` (gives the generic flex backends)."""
    window, causal, offset = params["window"], w.causal, w.seq_kv - w.seq_q
    return lambda b, h, q_idx, kv_idx: band(q_idx, kv_idx, window=window, causal=causal, offset=offset)


def band_flops(w: Workload, params: Params) -> FlopCount:
    return mask_flops(w, band_mask(w.seq_q, w.seq_kv, window=params["window"], causal=w.causal))


def check_window(w: Workload, params: Params) -> str | None:
    window = params["window"]
    if not isinstance(window, int) or window < 1:
        return f"toy_window: window must be a positive integer, got {window!r}"
    return None


SPEC = AttentionSpec(
    name="toy_window",
    title="Toy banded attention (plugin example)",
    paper=Paper("Longformer: The Long-Document Transformer", 2020, "2004.05150"),
    family="sparse-local",
    defaults={"window": 16},
    capabilities=Capabilities(gqa=True),
    flops=band_flops,
    kv_cache_bytes=lambda w, p: dense_kv_cache_bytes(w.replace(seq_kv=min(w.seq_kv, p["window"])), p),
    check=check_window,
    mask_mod=band_mask_mod,
    claims=("Attention cost linear in sequence length: O(N·w) instead of O(N²).",),
)


@register_method(SPEC)
def toy_window(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
               window: int = 16) -> torch.Tensor:
    """Reference: dense fp32 softmax attention under the N×N band mask.

    q `[B, Hq, Nq, D]`, k, v `[B, Hkv, Nk, D]` (Hq divisible by Hkv) → `[B, Hq, Nq, D]` in q's dtype.
    """
    return dense_attention(q, k, v, band_mask(q.shape[-2], k.shape[-2], window=window, causal=causal,
                                              device=q.device))


@register_backend(SPEC, Backend.SDPA, staged=True)
def toy_window_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                    window: int = 16) -> Callable[..., torch.Tensor]:
    """Setup builds the band mask once; the returned `(q, k, v) -> o` runs SDPA with it."""
    mask = band_mask(q.shape[-2], k.shape[-2], window=window, causal=causal, device=q.device)

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])

    return run
