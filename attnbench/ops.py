"""Public attention primitives every method, kernel and plugin builds on.

Dense masked softmax attention, causal masks (tensor and FlexAttention predicate), GQA head repeat,
the dense KV-cache size, the Workload of a set of tensors, and the FlexAttention runner with its
capability check. Methods import these from here, never from another method's file.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch

from attnbench.spec import DTYPES, Params, Workload

FLEX_RECOMPILE_LIMIT = 1024  # shape sweeps compile one graph per shape and mask; dynamo default is 8


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """`[B, Hkv, N, D]` → `[B, Hkv·groups, N, D]`, each kv head repeated for its query heads."""
    return x.repeat_interleave(groups, dim=1) if groups > 1 else x


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """Naive `softmax(QKᵀ/√D + bias, masked) V` in fp32 (or fp64) with GQA by repeating kv heads.

    Args:
        q: `[B, Hq, Nq, D]`; k, v: `[B, Hkv, Nk, D]` with Hq divisible by Hkv.
        mask: boolean, broadcastable to `[B, Hq, Nq, Nk]`; True = allowed. Fully masked rows give 0.
        bias: additive logits, broadcastable to `[B, Hq, Nq, Nk]`.
    Returns:
        `[B, Hq, Nq, D]` in q's dtype.
    """
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    g = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, g), repeat_kv(v, g)
    s = (q.to(acc) @ k.to(acc).transpose(-1, -2)) * q.shape[-1] ** -0.5
    if bias is not None:
        s = s + bias.to(acc)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1)
    if mask is not None:
        p = torch.nan_to_num(p, nan=0.0)
    return (p @ v.to(acc)).to(q.dtype)


def causal_mask(nq: int, nk: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """`[Nq, Nk]` boolean, bottom-right aligned: key j is visible to query i iff j ≤ i + Nk − Nq."""
    i = torch.arange(nq, device=device)[:, None]
    j = torch.arange(nk, device=device)[None, :]
    return j <= i + (nk - nq)


def causal_mask_mod(w: Workload, params: Params) -> Callable[..., Any] | None:
    """Bottom-right aligned causal FlexAttention predicate `j <= i + Nk - Nq` (None when not causal)."""
    if not w.causal:
        return None
    offset = w.seq_kv - w.seq_q
    return lambda b, h, q_idx, kv_idx: kv_idx <= q_idx + offset


def dense_kv_cache_bytes(w: Workload, params: Params) -> float:
    """K and V for every token, every kv head, per layer."""
    return 2.0 * w.batch * w.heads_kv * w.seq_kv * w.head_dim * torch.finfo(w.torch_dtype).bits / 8


def expect_kv_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_heads: int, name: str) -> None:
    """Raise when k/v do not carry `kv_heads` heads for q's query heads."""
    if k.shape[1] != kv_heads or v.shape[1] != kv_heads:
        raise ValueError(f"{name}: expected k/v with {kv_heads} heads for {q.shape[1]} query heads, "
                         f"got k {tuple(k.shape)}, v {tuple(v.shape)}")


def workload_of(q: torch.Tensor, k: torch.Tensor, causal: bool, params: Mapping[str, Any] | None = None,
                q_offset: int = 0) -> Workload:
    """The Workload describing these tensors (`spatial` taken from params; `q_offset`: q holds the
    rows `q_offset…` of a sequence of `q_offset + Nq` queries)."""
    dtype = next(name for name, dt in DTYPES.items() if dt == q.dtype)
    spatial = (params or {}).get("spatial")
    return Workload(batch=q.shape[0], heads_q=q.shape[1], heads_kv=k.shape[1], seq_q=q.shape[2] + q_offset,
                    seq_kv=k.shape[2], head_dim=q.shape[3], dtype=dtype, causal=causal,
                    device=q.device.type, spatial=tuple(spatial) if spatial else None)


def sdpa_can_run(w: Workload, params: Params) -> str | None:
    """SDPA's `is_causal` is top-left aligned: refuse causal cases with seq_q != seq_kv (e.g. decode steps)."""
    if w.causal and w.seq_q != w.seq_kv:
        return "SDPA is_causal is top-left aligned; causal needs seq_q == seq_kv"
    return None


def flex_can_run(w: Workload, params: Params) -> str | None:
    """Why FlexAttention cannot run `w` here (no backward on CPU, no float64 on GPU), or None."""
    if w.mode != "fwd" and w.device == "cpu":
        return "FlexAttention has no backward on CPU"
    if w.dtype == "float64" and w.device != "cpu":
        return "FlexAttention on GPU does not take float64"
    return None


def flex_runner(compiled: bool) -> Callable[..., torch.Tensor]:
    """`flex_attention`, eager or `torch.compile`d, called with dynamo's recompile limit raised (each
    shape and mask compiles once, deliberately) and the eager-is-unfused warning silenced."""
    from torch.nn.attention.flex_attention import flex_attention

    attend = torch.compile(flex_attention, dynamic=False) if compiled else flex_attention

    def run(*args: Any, **kwargs: Any) -> torch.Tensor:
        with torch._dynamo.config.patch(recompile_limit=FLEX_RECOMPILE_LIMIT), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*without torch.compile.*")  # eager is the point
            return attend(*args, **kwargs)

    return run
