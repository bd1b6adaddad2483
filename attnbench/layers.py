"""Build any registered method as an `nn.Module` on `x [B, N, C]`, under any of its backends.

Rotary position embeddings (RoPE) are applied here to the q/k heads: by `AttentionLayer` for
functional methods, and by layer methods that take a `rope` flag (they call `rotary` on their
own q/k heads just before attending).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from attnbench.registry import METHODS, MethodEntry
from attnbench.rope import rotary
from attnbench.spec import Backend, Params


def accepts_rope(entry: MethodEntry) -> bool:
    """Can `build_layer(..., rope=True)` build this method (functional, or a layer taking `rope`)?"""
    return entry.spec.kind != "layer" or "rope" in inspect.signature(entry.reference.fn).parameters


class AttentionLayer(nn.Module):
    """Generic layer around a functional method: QKV projection [→ RoPE] → method → output projection."""

    def __init__(self, entry: MethodEntry, backend: Backend, d_model: int, n_heads: int, *,
                 kv_heads: int | None = None, causal: bool = False, params: Params | None = None,
                 spatial: tuple[int, ...] | None = None, rope: bool = False) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        if rope and (d_model // n_heads) % 2:
            raise ValueError(f"RoPE needs an even head dim, got {d_model // n_heads}")
        self.rope = rope
        self.entry, self.backend, self.causal = entry, Backend(backend), causal
        self.n_heads, self.kv_heads = n_heads, kv_heads or n_heads
        self.head_dim = d_model // n_heads
        self.params = entry.spec.params(params)
        if spatial is not None:
            self.params["spatial"] = tuple(spatial)
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.kv = nn.Linear(d_model, 2 * self.kv_heads * self.head_dim, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(x).view(b, n, 2, self.kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.rope:
            q, k = rotary(q), rotary(k)
        impl = self.entry.impl(self.backend)
        o = impl.prepare(q, k, v, causal=self.causal, params=self.params)(q, k, v)
        return self.out(o.transpose(1, 2).reshape(b, n, -1))


def build_layer(method: str, backend: Backend | str, d_model: int, n_heads: int, *,
                kv_heads: int | None = None, causal: bool = False,
                params: Params | None = None, spatial: tuple[int, ...] | None = None,
                rope: bool = False) -> nn.Module:
    """An `nn.Module` for `method` under `backend`; same seed → same weights for every backend.

    `rope=True` rotates q/k by position; a layer method that takes no `rope` flag raises.
    """
    entry = METHODS.get(method)
    backend = Backend.parse(backend) if isinstance(backend, str) else backend
    entry.impl(backend)  # fail early on an unknown backend
    if rope and not accepts_rope(entry):
        raise ValueError(f"{method}: this layer method owns its q/k and takes no RoPE hook")
    if entry.spec.kind == "layer":
        kwargs: dict[str, Any] = dict(entry.spec.params(params))
        if spatial is not None:
            kwargs["spatial"] = tuple(spatial)
        if rope:
            kwargs["rope"] = True
        return entry.reference.fn(d_model, n_heads, backend=backend, causal=causal, **kwargs)
    cls = getattr(entry.reference.fn, "layer_cls", AttentionLayer)  # a functional method's own layer form (DMA)
    return cls(entry, backend, d_model, n_heads, kv_heads=kv_heads, causal=causal,
               params=params, spatial=spatial, rope=rope)
