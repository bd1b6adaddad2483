"""DMA — "Trainable Dynamic Mask Sparse Attention" (Shi et al., 2025), arXiv 2508.02124.

Each kv head scores every key from its value (`A ⊙ softplus(V W_dt)`); a query keeps its top-w
visible keys by that score, and the score is also added to the logits as a bias.

Two forms. The layer form (`DMALayer`, what the proxies train) owns `W_dt` (`[Hkv·D, Hkv]`) and
`A` (`[Hkv]`) as parameters, as the paper's module does: the routing learns through the bias.
The functional form (kernel suites, next to `mha/sdpa` on the same q, k, v) takes them as
`dt_weight`/`a` tensors when given; without them it uses a SEEDED FALLBACK, not a trained mask:
`W_dt` drawn from `seed` (N(0, 1/(Hkv·D)), on CPU, the same on every backend and device) and
`A = a` for every head — a fixed random function of V, fine for timing, not for accuracy.
(Doge zero-initialises A, which makes the top-w an all-ties choice, hence `a = 1`.)
Routing (dt projection, softplus, top-w) depends on the input: it runs inside every call and is
counted in useful and executed FLOPs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnbench import density
from attnbench.flops import mask_flops, with_routing
from attnbench.inputs import make_qkv
from attnbench.layers import AttentionLayer
from attnbench.ops import causal_mask, dense_attention
from attnbench.registry import register_method
from attnbench.spec import AttentionSpec, Capabilities, FlopCount, Paper, Params, Workload


def seeded_dt_weight(hkv: int, d: int, seed: int, device: torch.device | str) -> torch.Tensor:
    """The seeded fallback `W_dt [Hkv·D, Hkv]`, fp32, deterministic in `seed` (drawn on CPU)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    w = torch.randn(hkv * d, hkv, generator=gen) * (hkv * d) ** -0.5
    return w.to(device)


def dma_routing(v: torch.Tensor, nq: int, *, window: int, a: float | torch.Tensor, seed: int,
                shared_selection: bool = False, exp_bias: bool = False,
                dt_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Key bias and keep mask of DMA, computed in fp32 from the values.

    Args:
        v: `[B, Hkv, Nk, D]`. nq: number of queries (bottom-right aligned causal mask).
        window: w, keys kept per query. a: A, one value for every head or a `[Hkv]` tensor.
        dt_weight: learned `W_dt [Hkv·D, Hkv]`; None = the seeded fallback from `seed`.
        shared_selection: one top-w over all keys per kv head, shared by every query, with
            causality applied afterwards (the official no-padding path; early rows keep < w).
        exp_bias: the paper form `exp(A·softplus(dt))` instead of the code form `A·softplus(dt)`.
    Returns:
        bias `[B, Hkv, 1, Nk]` fp32 and keep `[B, Hkv, Nq, Nk]` bool (causal included).
    """
    b, hkv, nk, d = v.shape
    w_dt = dt_weight if dt_weight is not None else seeded_dt_weight(hkv, d, seed, v.device)
    dt = v.float().transpose(1, 2).reshape(b, nk, hkv * d) @ w_dt.float()
    a = a.float() if isinstance(a, torch.Tensor) else a
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


def routing_flops(w: Workload, params: Params) -> float:
    """dt projection (2·B·Nk·Hkv·D·Hkv), softplus and A (≈3 per key and kv head), top-w
    (one comparison per visible key of every query, or per key once when shared)."""
    b, hkv, nk, d = w.batch, w.heads_kv, w.seq_kv, w.head_dim
    proj = 2.0 * b * nk * hkv * d * hkv + 3.0 * b * nk * hkv
    if nk <= params["window"]:
        return proj
    return proj + b * hkv * (nk if params["shared_selection"] else w.seq_q * nk)


def seeded_keep(w: Workload, params: Params) -> torch.Tensor:
    """The keep mask `[B, Hkv, Nq, Nk]` of the seeded input `make_qkv(w, seed=0)` (fallback W_dt)."""
    _, _, v = make_qkv(w.replace(dtype="float32"), seed=0, device="cpu")
    return dma_routing(v, w.seq_q, window=params["window"], a=params["a"], seed=params["seed"],
                       shared_selection=params["shared_selection"], exp_bias=params["exp_bias"])[1]


def _flops(w: Workload, params: Params) -> FlopCount:
    """From the routing of a seeded random input of `w` (make_qkv seed 0); tiles of 128×128; routing in both."""
    return with_routing(mask_flops(w, seeded_keep(w, params)), routing_flops(w, params))


def at_density(w: Workload, target: float, params: Params) -> dict:
    """The window w attending `target` of the causal pairs of `w`: a query keeps min(w, visible)
    keys whatever the scores, so the count is the causal sliding window's (one key per step)."""
    return density.pick(density.window_choices(w.seq_kv, True), target)


SPEC = AttentionSpec(
    name="dma",
    title="Dynamic mask attention (DMA)",
    paper=Paper("Trainable Dynamic Mask Sparse Attention", 2025, "2508.02124"),
    family="sparse-dynamic",
    defaults={"window": 2048, "a": 1.0, "seed": 0, "shared_selection": False, "exp_bias": False},
    capabilities=Capabilities(causal=True, noncausal=False, gqa=True),
    flops=_flops,
    at_density=at_density,
    claims=("Forward ≈10× SDPA at 4k and ≈50× at 32k tokens (A100, w=1024, official kernel).",
            "Lower perplexity than MHA, SWA, MLA and NSA at equal compute.",
            "Here: kernel suites run the seeded-fallback routing (untrained W_dt, A); proxies train DMALayer."),
)


@register_method(SPEC)
def dma(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True, window: int = 2048,
        a: float | torch.Tensor = 1.0, seed: int = 0, shared_selection: bool = False, exp_bias: bool = False,
        dt_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Dense masked softmax `softmax(QKᵀ/√D + bias, keep) V`; q `[B, Hq, Nq, D]`, k/v `[B, Hkv, Nk, D]`.

    `dt_weight`/`a` tensors: the layer's learned routing; without `dt_weight`, the seeded fallback."""
    if not causal:
        raise ValueError("dma is causal only")
    bias, keep = dma_routing(v, q.shape[2], window=window, a=a, seed=seed, shared_selection=shared_selection,
                             exp_bias=exp_bias, dt_weight=dt_weight)
    g = q.shape[1] // k.shape[1]
    density.record_mask(keep, causal=True)
    return dense_attention(q, k, v, keep.repeat_interleave(g, dim=1), bias.repeat_interleave(g, dim=1))


class DMALayer(AttentionLayer):
    """The paper's DMA module: the generic layer plus learned `dt_proj` (`W_dt [Hkv·D, Hkv]`) and
    `A [Hkv]`, passed to the attention of any backend, so the routing trains through the bias.

    `W_dt` starts at the seeded fallback, `A` at `params["a"]`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        hkv, d = self.kv_heads, self.head_dim
        self.dt_proj = nn.Parameter(seeded_dt_weight(hkv, d, self._base["seed"], "cpu"))
        self.A = nn.Parameter(torch.full((hkv,), float(self._base["a"])))

    @property
    def params(self) -> dict[str, Any]:  # type: ignore[override]
        if "dt_proj" not in self._parameters:  # still in AttentionLayer.__init__
            return self._base
        return {**self._base, "dt_weight": self.dt_proj, "a": self.A}

    @params.setter
    def params(self, value: dict[str, Any]) -> None:
        self._base = value


dma.layer_cls = DMALayer  # type: ignore[attr-defined]  # build_layer's hook for a functional method's own layer
