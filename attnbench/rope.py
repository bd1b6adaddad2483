"""Rotary position embeddings (RoPE, Su et al. 2021, arXiv 2104.09864) on attention heads."""

from __future__ import annotations

from typing import Any

import torch


def rope_tables(n: int, dim: int, offset: int = 0, base: float = 10000.0,
                device: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables `[n, dim/2]` of rotary embeddings for positions offset … offset+n−1."""
    inv = base ** (-torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
    ang = torch.arange(offset, offset + n, device=device, dtype=torch.float32)[:, None] * inv[None, :]
    return ang.cos(), ang.sin()


def rotary(x: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """RoPE on heads `x [B, H, N, D]` (half-split pairs; position of row i is offset + i)."""
    if x.shape[-1] % 2:
        raise ValueError(f"RoPE needs an even head dim, got {x.shape[-1]}")
    cos, sin = rope_tables(x.shape[-2], x.shape[-1], offset, device=x.device)
    a, b = x.float().chunk(2, dim=-1)
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1).to(x.dtype)
