"""DHA: Decoupled-Head Attention — Chen et al., NeurIPS 2024, arXiv 2406.06567.

Query heads are kept; key heads and value heads are fused into fewer heads with *independent*
maps `kmap, vmap : [H] → [n_K], [n_V]`. Head h attends with key head kmap[h] and value head
vmap[h]. GQA (kmap = vmap = h // G) and MQA (one group) are special cases.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from attnbench.flops import SOFTMAX_FLOPS_PER_SCORE, causal_pairs
from attnbench.ops import causal_mask, dense_attention
from attnbench.registry import register_method, step
from attnbench.rope import rotary
from attnbench.spec import AttentionSpec, Backend, Capabilities, FlopCount, Paper, Params, Workload


def head_maps(n_heads: int, params: Params) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(kmap, vmap): explicit maps from params, else contiguous `h·n // H` for n_K / n_V heads."""
    def one(explicit: Sequence[int] | None, n: int) -> tuple[int, ...]:
        return tuple(int(j) for j in explicit) if explicit is not None else tuple(
            h * n // n_heads for h in range(n_heads))
    return one(params["kmap"], params["k_heads"]), one(params["vmap"], params["v_heads"])


def check(w: Workload, params: Params) -> str | None:
    for name, m in zip(("kmap", "vmap"), head_maps(w.heads_q, params), strict=True):
        if len(m) != w.heads_q:
            return f"{name} has {len(m)} entries for {w.heads_q} query heads"
        if min(m) < 0 or sorted(set(m)) != list(range(max(m) + 1)):
            return f"{name} {m} must use every head 0..n-1"
    if max(params["k_heads"], params["v_heads"]) > w.heads_q:
        return f"more kv heads than the {w.heads_q} query heads"
    return None


def _kv_heads(w: Workload, params: Params) -> tuple[int, int]:
    kmap, vmap = head_maps(w.heads_q, params)
    return max(kmap) + 1, max(vmap) + 1


def dha_flops(w: Workload, params: Params) -> FlopCount:
    """Card §12: core as MHA; projections 2·B·N·E·d·(H + n_K + n_V) + 2·B·N·H·d·E."""
    n_k, n_v = _kv_heads(w, params)
    pairs = causal_pairs(w.seq_q, w.seq_kv) if w.causal else w.seq_q * w.seq_kv
    e, d, h = w.d_model, w.head_dim, w.heads_q
    proj = 2.0 * w.seq_q * e * d * (h + n_k + n_v) + 2.0 * w.seq_q * h * d * e
    useful = w.batch * (4.0 * h * pairs * d + proj)
    return FlopCount(useful=useful, executed=useful, softmax=SOFTMAX_FLOPS_PER_SCORE * w.batch * h * pairs)


def dha_kv_cache_bytes(w: Workload, params: Params) -> float:
    """(n_K + n_V)·d per token per layer."""
    n_k, n_v = _kv_heads(w, params)
    return float(w.batch * w.seq_kv * (n_k + n_v) * w.head_dim * torch.finfo(w.torch_dtype).bits // 8)


SPEC = AttentionSpec(
    name="dha",
    title="Decoupled-head attention",
    paper=Paper("DHA: Learning Decoupled-Head Attention from Transformer Checkpoints via Adaptive "
                "Heads Fusion", 2024, "2406.06567"),
    family="compressed",
    kind="layer",
    defaults={"k_heads": 2, "v_heads": 1, "kmap": None, "vmap": None},
    capabilities=Capabilities(causal=True, noncausal=True, gqa=False, dims=(1,)),
    flops=dha_flops,
    kv_cache_bytes=dha_kv_cache_bytes,
    check=check,
    claims=("97.6% of the original performance with 0.25% of the pre-training budget and −75% KV cache.",
            "vs GQA: 5× training acceleration, up to +13.93% (arXiv v2)."),
)


def decoupled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, kmap: Sequence[int],
                        vmap: Sequence[int], causal: bool = False) -> torch.Tensor:
    """Reference step: head h reads key head kmap[h] and value head vmap[h].

    Args:
        q: `[B, H, N, D]`; k: `[B, n_K, N, D]`; v: `[B, n_V, N, D]`; kmap, vmap: H head indices.
    Returns:
        `[B, H, N, D]`.
    """
    mask = causal_mask(q.shape[-2], k.shape[-2], q.device) if causal else None
    return dense_attention(q, k[:, list(kmap)], v[:, list(vmap)], mask)


def fuse_heads(weight: torch.Tensor, head_map: Sequence[int], omega: torch.Tensor, head_dim: int
               ) -> torch.Tensor:
    """Fused projection `W'^j = Σ_{i: map(i)=j} ω_i W^i` from an MHA projection.

    Args:
        weight: `[H·d, E]` MHA key or value projection. head_map: H fused-head indices.
        omega: `[H]` fusion weights (uniform 1/G = GQA mean-pool init; one-hot = head pruning).
    Returns:
        `[n·d, E]` with n = max(head_map) + 1.
    """
    per_head = weight.unflatten(0, (len(head_map), head_dim)) * omega[:, None, None].to(weight.dtype)
    out = weight.new_zeros(max(head_map) + 1, head_dim, weight.shape[1])
    out.index_add_(0, torch.as_tensor(head_map, device=weight.device), per_head)
    return out.flatten(0, 1)


class DHAttention(nn.Module):
    """DHA layer on `x [B, N, E]`: H query heads, n_K key heads, n_V value heads, maps as given.

    Args:
        d_model: E. n_heads: H (d = E / H). k_heads, v_heads: n_K, n_V of the contiguous default maps.
        kmap, vmap: explicit maps (H entries each), overriding the contiguous ones.
    """

    def __init__(self, d_model: int, n_heads: int, *, backend: Backend | str, causal: bool = False,
                 k_heads: int = 2, v_heads: int = 1, kmap: Sequence[int] | None = None,
                 vmap: Sequence[int] | None = None, rope: bool = False) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"dha: d_model={d_model} not divisible by n_heads={n_heads}")
        self.rope = rope
        params = {"k_heads": k_heads, "v_heads": v_heads, "kmap": kmap, "vmap": vmap}
        if why := check(Workload(heads_q=n_heads, heads_kv=n_heads), params):
            raise ValueError(f"dha: {why}")
        self.kmap, self.vmap = head_maps(n_heads, params)
        self.n_heads, self.head_dim, self.causal = n_heads, d_model // n_heads, causal
        n_k, n_v = max(self.kmap) + 1, max(self.vmap) + 1
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, n_k * self.head_dim, bias=False)
        self.v = nn.Linear(d_model, n_v * self.head_dim, bias=False)
        self.o = nn.Linear(d_model, d_model, bias=False)
        self.aux_loss: torch.Tensor | None = None
        self.attend = decoupled_attention if Backend(backend) is Backend.REFERENCE else step(SPEC, backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x [B, N, E]` → `[B, N, E]`."""
        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (-1, self.head_dim)).transpose(1, 2)

        q, k = heads(self.q(x)), heads(self.k(x))
        if self.rope:
            q, k = rotary(q), rotary(k)
        o = self.attend(q, k, heads(self.v(x)), kmap=self.kmap, vmap=self.vmap, causal=self.causal)
        return self.o(o.transpose(1, 2).flatten(2))

    @torch.no_grad()
    def load_fused(self, wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor, wo: torch.Tensor,
                   omega_k: torch.Tensor, omega_v: torch.Tensor) -> None:
        """Initialise from MHA weights (`[E, E]` each), fusing K and V heads with ω per original head."""
        self.q.weight.copy_(wq)
        self.o.weight.copy_(wo)
        self.k.weight.copy_(fuse_heads(wk, self.kmap, omega_k, self.head_dim))
        self.v.weight.copy_(fuse_heads(wv, self.vmap, omega_v, self.head_dim))


@register_method(SPEC)
def dha(d_model: int, n_heads: int, *, backend: Backend | str, causal: bool = False, k_heads: int = 2,
        v_heads: int = 1, kmap: Sequence[int] | None = None, vmap: Sequence[int] | None = None,
        rope: bool = False) -> DHAttention:
    """Build a DHA layer (default: contiguous maps onto 2 key heads and 1 value head); `rope`
    rotates q/k by position."""
    return DHAttention(d_model, n_heads, backend=backend, causal=causal, k_heads=k_heads, v_heads=v_heads,
                       kmap=kmap, vmap=vmap, rope=rope)
