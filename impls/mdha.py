"""Multi-DConv-Head Attention — "Primer: Searching for Efficient Transformers for Language Modeling"
(So et al., 2021), arXiv 2109.08668. A 3-tap depthwise convolution over positions after each of the
Q, K, V projections, then plain softmax attention.

Positions: the convs mix neighbouring tokens but are not a position code (Primer's model keeps the
Transformer's own position scheme), so MDHA takes the same `rope` flag as MHA (rotation after the
convs, on q and k) and the proxies train it with the same positional treatment as MHA.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.flops import dense_flops
from attnbench.ops import causal_mask, dense_attention
from attnbench.registry import register_method, step
from attnbench.rope import rotary
from attnbench.spec import AttentionSpec, Backend, Capabilities, FlopCount, Paper, Params, Workload


def conv_flops(w: Workload, kernel_size: int, n_convs: int = 3) -> float:
    """Depthwise convs over positions: 2·k FLOPs per output channel value, `n_convs` of width C."""
    return 2.0 * kernel_size * n_convs * w.batch * w.seq_q * w.d_model


def proj_flops(w: Workload, n_proj: float = 4, rows: float | None = None) -> float:
    """`n_proj` `C × C` projections over `rows` tokens (default all `B·N`): `2·rows·C²` each."""
    rows = w.batch * w.seq_q if rows is None else rows
    return 2.0 * n_proj * rows * w.d_model * w.d_model


def mdha_flops(w: Workload, params: Params) -> FlopCount:
    """Q/K/V/O projections `8·B·N·C²` + the three depthwise convs + the dense attention core."""
    core = dense_flops(w)
    extra = conv_flops(w, params["kernel_size"]) + proj_flops(w)
    return FlopCount(useful=core.useful + extra, executed=core.useful + extra, softmax=core.softmax)


SPEC = AttentionSpec(
    name="mdha",
    title="Multi-DConv-Head Attention (Primer)",
    paper=Paper("Primer: Searching for Efficient Transformers for Language Modeling", 2021, "2109.08668"),
    family="positional",
    kind="layer",
    defaults={"kernel_size": 3, "share_across_heads": False},
    capabilities=Capabilities(causal=True, noncausal=True),
    flops=mdha_flops,
    claims=("Primer's MDHA lowers the compute needed to reach a given LM quality (with squared ReLU).",),
)


class DepthwiseConv(nn.Module):
    """Depthwise conv over positions on `[B, N, H·D]`.

    One kernel per channel of all `H·D` channels (Primer), or, with `share_across_heads`, one per
    channel of `D` shared by every head (official RCMHA code). Causal: left pad `k−1`; otherwise
    centred ("same") padding.
    """

    def __init__(self, n_heads: int, head_dim: int, kernel_size: int = 3, *,
                 share_across_heads: bool = False, causal: bool = True) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.causal = n_heads, head_dim, causal
        self.share = share_across_heads
        channels = head_dim if share_across_heads else n_heads * head_dim
        bound = 1.0 / math.sqrt(kernel_size)  # nn.Conv1d's default init for groups == channels
        self.weight = nn.Parameter(torch.empty(channels, kernel_size).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(channels).uniform_(-bound, bound))

    @property
    def kernel_size(self) -> int:
        return self.weight.shape[1]

    def set_identity(self) -> None:
        """Kernel `[0, …, 0, 1]` (causal) or centred delta, zero bias: the conv becomes the identity."""
        with torch.no_grad():
            self.weight.zero_()
            self.weight[:, self.kernel_size - 1 if self.causal else (self.kernel_size - 1) // 2] = 1.0
            self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        k = self.kernel_size
        if self.share:  # every head is its own sequence of D channels
            x = x.view(b, n, self.n_heads, self.head_dim).permute(0, 2, 3, 1).reshape(-1, self.head_dim, n)
        else:
            x = x.transpose(1, 2)
        pad = (k - 1, 0) if self.causal else ((k - 1) // 2, k // 2)
        y = F.conv1d(F.pad(x, pad), self.weight[:, None, :].to(x.dtype), self.bias.to(x.dtype),
                     groups=self.weight.shape[0])
        if self.share:
            return y.view(b, self.n_heads, self.head_dim, n).permute(0, 3, 1, 2).reshape(b, n, c)
        return y.transpose(1, 2).contiguous()  # unit stride on channels: SDPA's fused CPU kernel needs it


def attention_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False
                   ) -> torch.Tensor:
    """Reference softmax attention on `[B, H, N, D]` (fp32 accumulation)."""
    mask = causal_mask(q.shape[-2], k.shape[-2], q.device) if causal else None
    return dense_attention(q, k, v, mask)


class MDHA(nn.Module):
    """Q/K/V projections, a depthwise conv after each, softmax attention, output projection."""

    def __init__(self, d_model: int, n_heads: int, *, backend: Backend | str, causal: bool,
                 kernel_size: int, share_across_heads: bool, rope: bool = False) -> None:
        super().__init__()
        if rope and (d_model // n_heads) % 2:
            raise ValueError(f"RoPE needs an even head dim, got {d_model // n_heads}")
        self.rope = rope
        self.n_heads, self.head_dim, self.causal = n_heads, d_model // n_heads, causal
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.convs = nn.ModuleList(
            DepthwiseConv(n_heads, self.head_dim, kernel_size, share_across_heads=share_across_heads,
                          causal=causal) for _ in range(3))
        self.out = nn.Linear(d_model, d_model, bias=False)
        backend = Backend(backend)
        self.attend = attention_step if backend == Backend.REFERENCE else step(SPEC, backend)
        self.aux_loss = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (conv(t).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)
                   for conv, t in zip(self.convs, self.qkv(x).chunk(3, dim=-1), strict=True))
        if self.rope:
            q, k = rotary(q), rotary(k)
        o = self.attend(q, k, v, causal=self.causal)
        return self.out(o.transpose(1, 2).reshape(b, n, -1))


@register_method(SPEC)
def mdha(d_model: int, n_heads: int, *, backend: Backend | str = Backend.REFERENCE, causal: bool = False,
         kernel_size: int = 3, share_across_heads: bool = False, rope: bool = False) -> MDHA:
    """Build an MDHA layer on `x [B, N, C]` whose attention step runs under `backend`; `rope`
    rotates the convolved q/k by position."""
    return MDHA(d_model, n_heads, backend=backend, causal=causal, kernel_size=kernel_size,
                share_across_heads=share_across_heads, rope=rope)
