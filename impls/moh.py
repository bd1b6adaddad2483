"""MoH: Multi-Head Attention as Mixture-of-Head Attention — Jin et al., 2024, arXiv 2410.11842.

Each token weights the heads with a router: `h_s` shared heads are always on (soft weights),
`k` of the `H_r` routed heads are picked per token (top-k), and a 2-way softmax balances the two
groups. Gated head outputs go through `W_O`; a load-balance loss keeps the routed heads in use.
"""

from __future__ import annotations

import torch
from torch import nn

from attnbench.flops import SOFTMAX_FLOPS_PER_SCORE, causal_pairs
from attnbench.ops import causal_mask, dense_attention
from attnbench.ops import dense_kv_cache_bytes as mha_kv_cache_bytes
from attnbench.registry import register_method, step
from attnbench.rope import rotary
from attnbench.spec import AttentionSpec, Backend, Capabilities, FlopCount, Paper, Params, Workload


def head_split(n_heads: int, active_ratio: float, shared_ratio: float) -> tuple[int, int]:
    """(h_s, k): shared heads = round(H·shared_ratio), routed active = round(H·active_ratio) − h_s."""
    h_s = round(n_heads * shared_ratio)
    return h_s, round(n_heads * active_ratio) - h_s


def check(w: Workload, params: Params) -> str | None:
    h_s, k = head_split(w.heads_q, params["active_ratio"], params["shared_ratio"])
    if not 0 <= h_s < w.heads_q or not 1 <= k <= w.heads_q - h_s:
        return (f"{w.heads_q} heads with active_ratio={params['active_ratio']}, shared_ratio="
                f"{params['shared_ratio']} give {h_s} shared and {k} routed-active heads; need "
                f"0 ≤ h_s < H and 1 ≤ k ≤ H − h_s")
    return None


def moh_flops(w: Workload, params: Params) -> FlopCount:
    """Theoretical: projections 8·N·C² + routers + the active fraction (h_s+k)/H of the attention core."""
    h, c, n = w.heads_q, w.d_model, w.seq_q
    h_s, k = head_split(h, params["active_ratio"], params["shared_ratio"])
    active = (h_s + k) / h
    pairs = causal_pairs(n, n) if w.causal else n * n
    routers = 2.0 * n * c * ((h - h_s) + (h_s + 2 if h_s else 0))
    core = 4.0 * h * pairs * w.head_dim * active
    useful = w.batch * (8.0 * n * c * c + routers + core)
    return FlopCount(useful=useful, executed=useful,
                     softmax=SOFTMAX_FLOPS_PER_SCORE * w.batch * h * pairs * active)


SPEC = AttentionSpec(
    name="moh",
    title="Mixture-of-head attention",
    paper=Paper("MoH: Multi-Head Attention as Mixture-of-Head Attention", 2024, "2410.11842"),
    family="head-routing",
    kind="layer",
    defaults={"active_ratio": 0.75, "shared_ratio": 0.5, "aux_weight": 0.01},
    capabilities=Capabilities(causal=True, noncausal=True, gqa=False, dims=(1,)),
    flops=moh_flops,
    kv_cache_bytes=mha_kv_cache_bytes,
    check=check,
    claims=("MoH-ViT-B 84.9% ImageNet top-1 with 75% of the heads.",
            "MoH-LLaMA3-8B 64.0% average on 14 benchmarks (+2.4 over LLaMA3-8B) with 75% of the heads."),
)


def gated_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: torch.Tensor, *,
                    causal: bool = False, n_shared: int = 0) -> torch.Tensor:
    """Reference step: every head's attention, times its per-token gate.

    Args:
        q, k, v: `[B, H, N, D]`. gates: `[B, N, H]`, zero for the routed heads a token did not pick.
        n_shared: the first `n_shared` heads are shared (dense gates); unused by the reference.
    Returns:
        gated head outputs `[B, H, N, D]`.
    """
    mask = causal_mask(q.shape[-2], k.shape[-2], q.device) if causal else None
    return dense_attention(q, k, v, mask) * gates.transpose(1, 2)[..., None].to(q.dtype)


def load_balance_loss(probs: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """`H_r² · mean_i(f_i·P_i)`, f = mean routing probability, P = fraction of tokens picking i.

    Args:
        probs: `[..., H_r]` routing softmax. selected: `[..., H_r]` 0/1 top-k mask.
    """
    h_r = probs.shape[-1]
    f = probs.flatten(0, -2).mean(0)
    p = selected.flatten(0, -2).to(probs.dtype).mean(0)
    return h_r ** 2 * (f * p).mean()


class MoHAttention(nn.Module):
    """MoH layer on `x [B, N, C]`; `aux_loss` = aux_weight · load-balance loss after each forward.

    Args:
        d_model: C. n_heads: H. active_ratio: (h_s + k)/H, the heads each token uses.
        shared_ratio: h_s/H. aux_weight: β of the load-balance loss (0.01 in the paper).
    """

    def __init__(self, d_model: int, n_heads: int, *, backend: Backend | str, causal: bool = False,
                 active_ratio: float = 0.75, shared_ratio: float = 0.5, aux_weight: float = 0.01,
                 rope: bool = False) -> None:
        super().__init__()
        self.rope = rope
        self.h_s, self.k_active = head_split(n_heads, active_ratio, shared_ratio)
        if d_model % n_heads:
            raise ValueError(f"moh: d_model={d_model} not divisible by n_heads={n_heads}")
        w = Workload(heads_q=n_heads, heads_kv=n_heads, head_dim=d_model // n_heads)
        if why := check(w, {"active_ratio": active_ratio, "shared_ratio": shared_ratio}):
            raise ValueError(f"moh: {why}")
        self.n_heads, self.head_dim, self.causal = n_heads, d_model // n_heads, causal
        self.aux_weight = aux_weight
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.router = nn.Linear(d_model, n_heads - self.h_s, bias=False)  # W_r
        self.shared_router = nn.Linear(d_model, self.h_s, bias=False) if self.h_s else None  # W_s
        self.mix = nn.Linear(d_model, 2, bias=False) if self.h_s else None  # W_0
        self.aux_loss: torch.Tensor | None = None
        self.balance_loss: torch.Tensor | None = None
        self.attend = gated_attention if Backend(backend) is Backend.REFERENCE else step(SPEC, backend)

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Head gates `[B, N, H]` (shared heads first), routing probs and top-k mask `[B, N, H_r]`."""
        p = torch.softmax(self.router(x).float(), dim=-1)
        top = p.topk(self.k_active, dim=-1).indices
        m = torch.zeros_like(p).scatter_(-1, top, 1.0)
        pm = p * m
        g_r = self.k_active * pm / pm.sum(-1, keepdim=True)
        if not self.h_s:
            return g_r, p, m
        g_s = self.h_s * torch.softmax(self.shared_router(x).float(), dim=-1)
        w = 2 * torch.softmax(self.mix(x).float(), dim=-1)
        return torch.cat([w[..., :1] * g_s, w[..., 1:] * g_r], -1), p, m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x [B, N, C]` → `[B, N, C]`."""
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.rope:
            q, k = rotary(q), rotary(k)
        g, p, m = self.gates(x)
        self.balance_loss = load_balance_loss(p, m)
        self.aux_loss = self.aux_weight * self.balance_loss
        o = self.attend(q, k, v, g.to(x.dtype), causal=self.causal, n_shared=self.h_s)
        return self.out(o.transpose(1, 2).reshape(b, n, -1))


@register_method(SPEC)
def moh(d_model: int, n_heads: int, *, backend: Backend | str, causal: bool = False,
        active_ratio: float = 0.75, shared_ratio: float = 0.5, aux_weight: float = 0.01,
        rope: bool = False) -> MoHAttention:
    """Build a MoH layer; `active_ratio` sets the fraction of heads each token runs; `rope`
    rotates q/k by position."""
    return MoHAttention(d_model, n_heads, backend=backend, causal=causal, active_ratio=active_ratio,
                        shared_ratio=shared_ratio, aux_weight=aux_weight, rope=rope)
