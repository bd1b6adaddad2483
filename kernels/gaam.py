"""Vectorised GAAM step (`native`): all heads at once as `[B, N, H, C/H]`, Gaussians accumulated one
at a time (no `[G, B, N, C]` stack), one pass for mean and variance."""

from __future__ import annotations

import math

import torch

from attnbench.impls.gaam import SPEC
from attnbench.registry import register_backend
from attnbench.spec import Backend


@register_backend(SPEC, Backend.NATIVE)
def gaam_native(x: torch.Tensor, delta: torch.Tensor, c: torch.Tensor, mix: torch.Tensor, *, n_heads: int,
                norm_axis: str, variant: str, eps: float) -> torch.Tensor:
    """`x ⊙ W` on `x [B, N, C]`; delta, c, mix `[H, G]` (`[C]` for daam_unnorm delta and c)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    b, n, ch = x.shape
    xh = x.to(acc).view(b, n, n_heads, ch // n_heads)
    dim = 1 if norm_axis == "seq" else 3
    var, mu = torch.var_mean(xh, dim=dim, keepdim=True)
    inv_sigma = torch.rsqrt(var + eps)
    if variant == "daam_unnorm":
        y = (xh - mu - delta.to(acc).view(n_heads, -1)) * inv_sigma
        return (xh * torch.exp(-0.5 * y.square() / c.to(acc).view(n_heads, -1))).view(b, n, ch).to(x.dtype)
    z = (xh - mu) * inv_sigma  # standardised value; Gaussian i is centred at δ_i/σ
    delta, c2 = delta.to(acc), c.to(acc).square()
    coef = torch.softmax(mix.to(acc), dim=-1) if variant == "v1_mixture_norm" else None
    g = None  # mixture: Σ_i π_i·exp(·); product: Σ_i log N(·), normalised by a softmax (no underflow)
    for i in range(delta.shape[1]):
        sq = -0.5 * (z - delta[:, i, None] * inv_sigma).square() / c2[:, i, None]
        term = coef[:, i, None] * torch.exp(sq) if coef is not None else \
            sq - 0.5 * torch.log(2.0 * math.pi * c2[:, i, None])
        g = term if g is None else g + term
    wts = g / g.sum(dim, keepdim=True).clamp_min(eps) if coef is not None else torch.softmax(g, dim=dim)
    return (xh * wts).view(b, n, ch).to(x.dtype)
