"""Spectral gating through `torch.fft` (rfft2 → × W → irfft2, orthonormal), the paper's own path."""

from __future__ import annotations

import torch

from attnbench.impls.spectformer import SPEC
from attnbench.registry import register_backend
from attnbench.spec import Backend


@register_backend(SPEC, Backend.NATIVE)
def spectral_filter_fft(x: torch.Tensor, weight: torch.Tensor, *, spatial: tuple[int, int]) -> torch.Tensor:
    """`x [B, N, C]`, complex W `[a, ⌊b/2⌋+1, C]` → `[B, N, C]`; computed in fp32 (fp64 stays fp64)."""
    a, b = spatial
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    xg = x.to(dt).unflatten(1, (a, b))
    y = torch.fft.irfft2(torch.fft.rfft2(xg, dim=(1, 2), norm="ortho") * weight, s=(a, b), dim=(1, 2),
                         norm="ortho")
    return y.flatten(1, 2).to(x.dtype)
