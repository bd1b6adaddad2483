"""Sparsifiner — "Learning Sparse Instance-Dependent Attention for Efficient Vision Transformers"
(Wei et al., CVPR 2023), arXiv 2303.13755.

A layer method: each MHSA has a low-rank connectivity predictor (channels d → d/c, tokens
N → N/r) whose approximate attention map gives, per query row, the top K = ⌈ρN⌉ keys; the real
attention runs on those keys only. Token 0 is the CLS token and attends to every key.

The token-reduction matrices are `[N, N/r]`, so the layer is built for one length: the grid in
`spatial` (which `adapt` sets to `(N,)`) or `num_tokens`. `module.aux_loss` is the attention
reconstruction loss (MSE of the un-sparsified predictor map vs the detached dense attention),
set in training mode and None in eval. Token pruning (off by default in the paper) is left out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from attnbench import density
from attnbench.flops import SOFTMAX_FLOPS_PER_SCORE
from attnbench.ops import dense_attention
from attnbench.registry import register_method, step
from attnbench.spec import AttentionSpec, Backend, Capabilities, FlopCount, Paper, Params, Workload


def budget(n: int, keep_ratio: float) -> int:
    """K, keys kept per non-CLS row."""
    return min(n, math.ceil(keep_ratio * n))


def masked_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor,
                            n_dense: int) -> torch.Tensor:
    """Reference step: dense masked softmax. The first `n_dense` rows see every key.

    q, k, v: `[B, H, N, D]`; idx `[B, H, N - n_dense, K]` key indices of the other rows.
    """
    b, h, n, _ = q.shape
    sparse = torch.zeros(b, h, n - n_dense, n, dtype=torch.bool, device=q.device).scatter_(-1, idx, True)
    dense = torch.ones(b, h, n_dense, n, dtype=torch.bool, device=q.device)
    mask = torch.cat([dense, sparse], dim=2)
    density.record_mask(mask, causal=False)
    return dense_attention(q, k, v, mask)


def _flops(w: Workload, params: Params) -> FlopCount:
    """Exact without inputs (card §8): attention + predictor + qkv/out projections.

    Attention: CLS rows see N keys, the others K. Predictor: channel reductions, the N → N/r
    token reduction, the cheap scores and Â = coef·basis; `useful` counts Â with its top-8
    coefficients (the card's 2·B·H·N·8·N), `executed` the dense `[N, N/r] @ [N/r, N]` run here.
    """
    b, h, n, d = w.batch, w.heads_q, w.seq_q, w.head_dim
    n_dense = 1 if params["cls_token"] else 0
    pairs = n_dense * w.seq_kv + (n - n_dense) * budget(w.seq_kv, params["keep_ratio"])
    attention = 4.0 * b * h * pairs * d
    dc, nr = max(1, d // params["reduce_c"]), max(1, n // params["reduce_n"])
    predictor = 2.0 * b * h * (2 * n * d * dc + dc * n * nr + n * dc * nr)
    projections = 8.0 * b * n * w.d_model ** 2
    rows = n - n_dense
    useful = attention + predictor + projections + 2.0 * b * h * rows * min(params["coef_topk"], nr) * n
    executed = attention + predictor + projections + 2.0 * b * h * rows * nr * n
    softmax = SOFTMAX_FLOPS_PER_SCORE * b * h * pairs
    return FlopCount(useful=useful, executed=executed, softmax=softmax)


def at_density(w: Workload, target: float, params: Params) -> dict:
    """`keep_ratio` whose K keys per row (CLS rows see all N) attend `target` of the N² pairs."""
    n, n_dense = w.seq_q, int(bool(params["cls_token"]))
    rows = max(n - n_dense, 1)
    k = min(n, max(1, round((target * n * n - n_dense * n) / rows)))
    ratio = k / n
    while budget(n, ratio) > k:  # float rounding: ⌈ratio·n⌉ must give exactly K
        ratio = math.nextafter(ratio, 0.0)
    return {"keep_ratio": ratio}


SPEC = AttentionSpec(
    name="sparsifiner",
    title="Sparsifiner (instance-dependent sparse attention)",
    paper=Paper("Sparsifiner: Learning Sparse Instance-Dependent Attention for Efficient Vision Transformers",
                2023, "2303.13755"),
    family="sparse-dynamic",
    kind="layer",
    defaults={"keep_ratio": 0.25, "reduce_n": 6, "reduce_c": 2, "coef_topk": 8, "basis_threshold": 2e-2,
              "cls_token": True, "num_tokens": 197},
    capabilities=Capabilities(causal=False, noncausal=True, dims=(1, 2)),
    flops=_flops,
    at_density=at_density,
    adapt=lambda w, p: w if w.spatial else w.replace(spatial=(w.seq_q,)),
    check=lambda w, p: None if w.seq_q == w.seq_kv else "sparsifiner is self-attention (seq_q == seq_kv)",
    claims=("−48% to −69% MHSA FLOPs with ≤0.4% top-1 drop (ImageNet).",),
)


class Sparsifiner(nn.Module):
    """MHSA with a low-rank connectivity predictor; `forward(x [B, N, C]) -> [B, N, C]`."""

    def __init__(self, d_model: int, n_heads: int, *, backend: Backend, num_tokens: int, keep_ratio: float,
                 reduce_n: int, reduce_c: int, coef_topk: int, basis_threshold: float,
                 cls_token: bool) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.num_tokens, self.keep_ratio = num_tokens, keep_ratio
        self.coef_topk, self.basis_threshold, self.n_dense = coef_topk, basis_threshold, int(cls_token)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model)
        reduced_c, reduced_n = max(1, self.head_dim // reduce_c), max(1, num_tokens // reduce_n)
        self.proj_c_q = nn.Linear(self.head_dim, reduced_c)
        self.proj_c_k = nn.Linear(self.head_dim, reduced_c)
        self.proj_n = nn.Parameter(nn.init.trunc_normal_(torch.empty(num_tokens, reduced_n), std=0.02))
        self.proj_back_n = nn.Parameter(nn.init.trunc_normal_(torch.empty(num_tokens, reduced_n), std=0.02))
        self.attend: Callable[..., torch.Tensor] = (
            masked_sparse_attention if Backend(backend) is Backend.REFERENCE else step(SPEC, backend))
        self.aux_loss: torch.Tensor | None = None

    def predict(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Connectivity: top-K key indices `[B, H, N - n_dense, K]` and the basis coefficients.

        coef = softmax(q'(k'ᵀ P_n) / √H); Â = top-8(coef) · thr(|P_back|ᵀ); the mask is rowTopK(Â).
        """
        acc = torch.float64 if q.dtype == torch.float64 else torch.float32
        qc = self.proj_c_q(q)[:, :, self.n_dense:].to(acc)  # [B, H, N-c, c']
        kc = self.proj_c_k(k).to(acc).transpose(-1, -2) @ self.proj_n.to(acc)  # [B, H, c', N/r]
        coef = torch.softmax((qc @ kc) * self.n_heads ** -0.5, dim=-1)  # [B, H, N-c, N/r]
        top = coef.topk(min(self.coef_topk, coef.shape[-1]), dim=-1)
        sparse_coef = torch.zeros_like(coef).scatter_(-1, top.indices, top.values)
        basis = self.proj_back_n.to(acc).abs().t()
        basis = basis.masked_fill(basis <= self.basis_threshold, 0.0)  # [N/r, N]
        approx = sparse_coef @ basis  # [B, H, N-c, N]
        idx = approx.detach().topk(budget(q.shape[2], self.keep_ratio), dim=-1).indices
        return idx, coef

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        if n != self.num_tokens:
            raise ValueError(f"sparsifiner was built for {self.num_tokens} tokens, got {n}")
        q, k, v = self.qkv(x).view(b, n, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        idx, coef = self.predict(q, k)
        o = self.attend(q, k, v, idx, self.n_dense)
        self.aux_loss = self._reconstruction_loss(q, k, coef) if self.training else None
        return self.proj(o.transpose(1, 2).reshape(b, n, c))

    def _reconstruction_loss(self, q: torch.Tensor, k: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        """MSE of coef·P_backᵀ (no top-8, no threshold: the reconstruction phase) vs dense attention."""
        s = (q @ k.transpose(-1, -2)) * self.head_dim ** -0.5
        teacher = torch.softmax(s.float(), dim=-1)[:, :, self.n_dense:].detach()
        approx = coef @ self.proj_back_n.to(coef.dtype).t()
        return torch.mean((approx.float() - teacher) ** 2)


@register_method(SPEC)
def build(d_model: int, n_heads: int, *, backend: Backend = Backend.REFERENCE, causal: bool = False,
          keep_ratio: float = 0.25, reduce_n: int = 6, reduce_c: int = 2, coef_topk: int = 8,
          basis_threshold: float = 2e-2, cls_token: bool = True, num_tokens: int = 197,
          spatial: Sequence[int] | None = None) -> Sparsifiner:
    """Sparsifiner layer for `prod(spatial)` tokens (or `num_tokens` without a grid)."""
    if causal:
        raise ValueError("sparsifiner is non-causal")
    n = math.prod(spatial) if spatial else num_tokens
    return Sparsifiner(d_model, n_heads, backend=backend, num_tokens=n, keep_ratio=keep_ratio,
                       reduce_n=reduce_n, reduce_c=reduce_c, coef_topk=coef_topk,
                       basis_threshold=basis_threshold, cls_token=cls_token)
