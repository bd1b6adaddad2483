"""Build any registered method as an `nn.Module` on `x [B, N, C]`, under any of its backends."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attnbench.registry import METHODS, MethodEntry
from attnbench.spec import Backend, Params


class AttentionLayer(nn.Module):
    """Generic layer around a functional method: QKV projection → method → output projection."""

    def __init__(self, entry: MethodEntry, backend: Backend, d_model: int, n_heads: int, *,
                 kv_heads: int | None = None, causal: bool = False, params: Params | None = None,
                 spatial: tuple[int, ...] | None = None) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
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
        impl = self.entry.impl(self.backend)
        o = impl.prepare(q, k, v, causal=self.causal, params=self.params)(q, k, v)
        return self.out(o.transpose(1, 2).reshape(b, n, -1))


def build_layer(method: str, backend: Backend | str, d_model: int, n_heads: int, *,
                kv_heads: int | None = None, causal: bool = False,
                params: Params | None = None, spatial: tuple[int, ...] | None = None) -> nn.Module:
    """An `nn.Module` for `method` under `backend`; same seed → same weights for every backend."""
    entry = METHODS.get(method)
    backend = Backend.parse(backend) if isinstance(backend, str) else backend
    entry.impl(backend)  # fail early on an unknown backend
    if entry.spec.kind == "layer":
        kwargs: dict[str, Any] = dict(entry.spec.params(params))
        if spatial is not None:
            kwargs["spatial"] = tuple(spatial)
        return entry.reference.fn(d_model, n_heads, backend=backend, causal=causal, **kwargs)
    return AttentionLayer(entry, backend, d_model, n_heads, kv_heads=kv_heads, causal=causal,
                          params=params, spatial=spatial)
