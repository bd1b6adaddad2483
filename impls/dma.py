"""DMA — "Trainable Dynamic Mask Sparse Attention" (Shi et al., 2025), arXiv 2508.02124.

Each kv head scores every key from its value (`A ⊙ softplus(V W_dt)`); a query keeps its top-w
visible keys by that score, and the score is also added to the logits as a bias.

Functional form: the `W_dt` projection (`[Hkv·D, Hkv]`) and `A` are not learned here. `W_dt` is
drawn from `seed` (N(0, 1/(Hkv·D)), on CPU, so every backend and device gets the same weights) and
`A = a` for every head. DMA stays functional so that it runs in every kernel suite next to
`mha/sdpa` on the same q, k, v; the generic layer wrapper gives it projections for the model
suites. (Doge zero-initialises A, which makes the top-w an all-ties choice, hence `a = 1`.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnbench.flops import mask_flops
from attnbench.inputs import make_qkv
from attnbench.ops import causal_mask, dense_attention
from attnbench.registry import register_method
from attnbench.spec import AttentionSpec, Capabilities, FlopCount, Paper, Params, Workload


def dt_weight(hkv: int, d: int, seed: int, device: torch.device | str) -> torch.Tensor:
    """`W_dt [Hkv·D, Hkv]`, fp32, deterministic in `seed` (drawn on CPU)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    w = torch.randn(hkv * d, hkv, generator=gen) * (hkv * d) ** -0.5
    return w.to(device)


def dma_routing(v: torch.Tensor, nq: int, *, window: int, a: float, seed: int,
                shared_selection: bool = False, exp_bias: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Key bias and keep mask of DMA, computed in fp32 from the values.

    Args:
        v: `[B, Hkv, Nk, D]`. nq: number of queries (bottom-right aligned causal mask).
        window: w, keys kept per query. a: value of A for every head.
        shared_selection: one top-w over all keys per kv head, shared by every query, with
            causality applied afterwards (the official no-padding path; early rows keep < w).
        exp_bias: the paper form `exp(A·softplus(dt))` instead of the code form `A·softplus(dt)`.
    Returns:
        bias `[B, Hkv, 1, Nk]` fp32 and keep `[B, Hkv, Nq, Nk]` bool (causal included).
    """
    b, hkv, nk, d = v.shape
    dt = v.float().transpose(1, 2).reshape(b, nk, hkv * d) @ dt_weight(hkv, d, seed, v.device)
    bias = a * F.softplus(dt)  # [B, Nk, Hkv]
    bias = (torch.exp(bias) if exp_bias else bias).transpose(1, 2)[:, :, None, :]
    visible = causal_mask(nq, nk, v.device)  # [Nq, Nk]
    if nk <= window:
        return bias, visible.expand(b, hkv, nq, nk)
    score = bias.detach()
    if shared_selection:
        top = score[:, :, 0].topk(window, dim=-1).indices  # [B, Hkv, w]
        keep = torch.zeros(b, hkv, nk, dtype=torch.bool, device=v.device).scatter_(-1, top, True)
        return bias, keep[:, :, None, :] & visible
    masked = score.expand(b, hkv, nq, nk).masked_fill(~visible, float("-inf"))
    top = masked.topk(window, dim=-1).indices  # [B, Hkv, Nq, w]
    keep = torch.zeros(b, hkv, nq, nk, dtype=torch.bool, device=v.device).scatter_(-1, top, True)
    return bias, keep & visible  # rows with < w visible keys picked some -inf entries: drop them


def _flops(w: Workload, params: Params) -> FlopCount:
    """From the routing of a seeded random input of `w` (make_qkv seed 0); tiles of 128×128."""
    _, _, v = make_qkv(w.replace(dtype="float32"), seed=0)
    _, keep = dma_routing(v, w.seq_q, window=params["window"], a=params["a"], seed=params["seed"],
                          shared_selection=params["shared_selection"], exp_bias=params["exp_bias"])
    return mask_flops(w, keep)  # keep has Hkv heads: mask_flops repeats it over each group


SPEC = AttentionSpec(
    name="dma",
    title="Dynamic mask attention (DMA)",
    paper=Paper("Trainable Dynamic Mask Sparse Attention", 2025, "2508.02124"),
    family="sparse-dynamic",
    defaults={"window": 2048, "a": 1.0, "seed": 0, "shared_selection": False, "exp_bias": False},
    capabilities=Capabilities(causal=True, noncausal=False, gqa=True),
    flops=_flops,
    claims=("Forward ≈10× SDPA at 4k and ≈50× at 32k tokens (A100, w=1024, official kernel).",
            "Lower perplexity than MHA, SWA, MLA and NSA at equal compute."),
)


@register_method(SPEC)
def dma(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True, window: int = 2048,
        a: float = 1.0, seed: int = 0, shared_selection: bool = False, exp_bias: bool = False
        ) -> torch.Tensor:
    """Dense masked softmax `softmax(QKᵀ/√D + bias, keep) V`; q `[B, Hq, Nq, D]`, k/v `[B, Hkv, Nk, D]`."""
    if not causal:
        raise ValueError("dma is causal only")
    bias, keep = dma_routing(v, q.shape[2], window=window, a=a, seed=seed,
                             shared_selection=shared_selection, exp_bias=exp_bias)
    g = q.shape[1] // k.shape[1]
    return dense_attention(q, k, v, keep.repeat_interleave(g, dim=1), bias.repeat_interleave(g, dim=1))
