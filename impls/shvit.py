"""SHViT: Single-Head Vision Transformer with Memory Efficient Macro Design — Yun & Ro, CVPR 2024,
arXiv 2401.16456. The SHSA layer: single-head attention on a fraction of the channels."""

from __future__ import annotations

import torch
from torch import nn

from attnbench.flops import SOFTMAX_FLOPS_PER_SCORE
from attnbench.ops import dense_attention
from attnbench.registry import register_method, step
from attnbench.spec import AttentionSpec, Backend, Capabilities, FlopCount, Paper, Params, Workload


def partial_dim(d_model: int, partial_ratio: float) -> int:
    """C_p = round(C · r), at least 1 (the paper's r = 1/4.67)."""
    return max(1, round(d_model * partial_ratio))


def shvit_flops(w: Workload, params: Params) -> FlopCount:
    """Card §10: attention 2N²(D_qk + C_p); qkv 2N·C_p(2·D_qk + C_p); proj 2NC²."""
    n, c, qk = w.seq_q, w.d_model, params["qk_dim"]
    cp = partial_dim(c, params["partial_ratio"])
    useful = w.batch * (2.0 * n * n * (qk + cp) + 2.0 * n * cp * (2 * qk + cp) + 2.0 * n * c * c)
    return FlopCount(useful=useful, executed=useful, softmax=SOFTMAX_FLOPS_PER_SCORE * w.batch * n * n)


SPEC = AttentionSpec(
    name="shvit",
    title="Single-head self-attention (SHViT)",
    paper=Paper("SHViT: Single-Head Vision Transformer with Memory Efficient Macro Design", 2024,
                "2401.16456"),
    family="dense",
    kind="layer",
    defaults={"partial_ratio": 1 / 4.67, "qk_dim": 16},
    capabilities=Capabilities(causal=False, noncausal=True, gqa=False, dims=(1, 2)),
    flops=shvit_flops,
    claims=("SHViT-S4: 79.4% ImageNet top-1 at 256², 986 MFLOPs, 14283 img/s.",
            "3.3×/8.1×/2.4× faster than MobileViTv2-1.0 on GPU/CPU/iPhone12 with +1.3% accuracy."),
)


def single_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Reference step: `softmax(q kᵀ/√D_qk) v` with q, k `[B, 1, N, D_qk]`, v `[B, 1, N, C_p]`."""
    return dense_attention(q, k, v)


class SHSA(nn.Module):
    """Single-head self-attention on the first C_p channels of `x [B, N, C]`; the rest bypass it.

    `x1 = GroupNorm₁(x[..., :C_p])`, `[q|k|v] = x1 W_qkv`, `y = W_proj ReLU([attn(q,k,v) | x[..., C_p:]])`.
    The paper's Conv1×1+BN pairs are written as biased linears (BN folded, as at inference), and
    the output projection is not zero-initialised (the residual lives outside this layer).

    Args:
        d_model: C. n_heads: ignored (one head). partial_ratio: C_p / C. qk_dim: D_qk (16).
        spatial: the token grid, accepted for 2-D workloads; the layer does not depend on it.
    """

    def __init__(self, d_model: int, n_heads: int, *, backend: Backend | str, causal: bool = False,
                 partial_ratio: float = 1 / 4.67, qk_dim: int = 16,
                 spatial: tuple[int, ...] | None = None) -> None:
        super().__init__()
        if causal:
            raise ValueError("shvit has no causal form (GroupNorm mixes all tokens)")
        self.cp, self.qk_dim = partial_dim(d_model, partial_ratio), qk_dim
        self.norm = nn.GroupNorm(1, self.cp)
        self.qkv = nn.Linear(self.cp, 2 * qk_dim + self.cp)
        self.proj = nn.Linear(d_model, d_model)
        self.aux_loss: torch.Tensor | None = None
        self.attend = single_head_attention if Backend(backend) is Backend.REFERENCE else step(SPEC, backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x [B, N, C]` → `[B, N, C]`."""
        x1, x2 = x[..., :self.cp], x[..., self.cp:]
        x1 = self.norm(x1.transpose(1, 2)).transpose(1, 2)
        q, k, v = self.qkv(x1)[:, None].split([self.qk_dim, self.qk_dim, self.cp], dim=-1)
        x1 = self.attend(q, k, v)[:, 0]
        return self.proj(torch.relu(torch.cat([x1, x2], -1)))


@register_method(SPEC)
def shvit(d_model: int, n_heads: int, *, backend: Backend | str, causal: bool = False,
          partial_ratio: float = 1 / 4.67, qk_dim: int = 16, spatial: tuple[int, ...] | None = None) -> SHSA:
    """Build an SHSA layer (single head on C_p = C·partial_ratio channels)."""
    return SHSA(d_model, n_heads, backend=backend, causal=causal, partial_ratio=partial_ratio,
                qk_dim=qk_dim, spatial=spatial)
