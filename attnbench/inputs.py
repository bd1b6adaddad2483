"""Deterministic random inputs for a workload."""

from __future__ import annotations

import torch

from attnbench.spec import Workload


def make_qkv(w: Workload, *, seed: int = 0, dtype: torch.dtype | None = None,
             device: str | None = None, requires_grad: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q `[B, Hq, Nq, D]`, k and v `[B, Hkv, Nk, D]`, standard normal, reproducible per seed."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    shapes = [(w.batch, w.heads_q, w.seq_q, w.head_dim), (w.batch, w.heads_kv, w.seq_kv, w.head_dim),
              (w.batch, w.heads_kv, w.seq_kv, w.head_dim)]
    out = []
    for shape in shapes:
        t = torch.randn(shape, generator=gen, dtype=torch.float32)
        t = t.to(device=device or w.device, dtype=dtype or w.torch_dtype)
        out.append(t.requires_grad_(requires_grad))
    return out[0], out[1], out[2]


def make_x(w: Workload, *, seed: int = 0, dtype: torch.dtype | None = None,
           device: str | None = None, requires_grad: bool = False) -> torch.Tensor:
    """Hidden states `[B, N, C]` with C = Hq * D, for layer methods."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn((w.batch, w.seq_q, w.d_model), generator=gen, dtype=torch.float32)
    return x.to(device=device or w.device, dtype=dtype or w.torch_dtype).requires_grad_(requires_grad)
