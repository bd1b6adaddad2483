"""Attention-Challenging MIL — "Attention-Challenging Multiple Instance Learning for Whole Slide Image
Classification" (Zhang et al., ECCV 2024), arXiv 2311.07125.

Gated attention pooling with M branches (MBA); in training, stochastic top-K instance masking (STKIM)
drops ⌊K·p⌋ of each branch's top-K instances so the pooling must use other instances. As in the
official `ACMIL_GA`, the masked logits feed everything in training: the branch features (and their
per-branch classifiers), the bag weights of the slide classifier and the diversity loss.
"""

from __future__ import annotations

import torch
from torch import nn

from attnbench.registry import register_method, step
from attnbench.spec import AttentionSpec, Backend, Capabilities, FlopCount, Paper, Params, Workload

MASKED_LOGIT = -1e9


def acmil_flops(w: Workload, params: Params) -> FlopCount:
    """DimRed `2·N·C²`, gated scorer `4·N·C·h + 2·N·h·M`, pooling `2·M·N·C + 2·N·C`, branch heads
    `2·M·C·classes` (per bag, × B)."""
    n, c, h, m = w.seq_q, w.d_model, params["hidden"], params["n_branches"]
    per_bag = 2.0 * n * c * c + 4.0 * n * c * h + 2.0 * n * h * m + 2.0 * m * n * c + 2.0 * n * c
    total = w.batch * (per_bag + 2.0 * m * c * params["n_classes"])
    return FlopCount(useful=total, executed=total)


SPEC = AttentionSpec(
    name="acmil",
    title="Attention-challenging MIL (multi-branch gated pooling with stochastic top-K masking)",
    paper=Paper("Attention-Challenging Multiple Instance Learning for Whole Slide Image Classification",
                2024, "2311.07125"),
    family="sparse-dynamic",
    kind="layer",
    # n_classes: per-branch classifiers, set by a bag-classification task (0 = none: a plain pooling layer)
    defaults={"n_branches": 5, "top_k": 10, "mask_prob": 0.6, "hidden": 128, "n_classes": 0},
    capabilities=Capabilities(causal=False, noncausal=True),
    flops=acmil_flops,
    claims=("Beats earlier MIL methods on CAMELYON16, BRACS and LBC with two backbones "
            "(numbers unverified).",
            "STKIM and the multi-branch diversity loss reduce attention over-concentration on a few "
            "instances, which the paper credits for the gain over ABMIL."),
)


def stkim_mask(scores: torch.Tensor, noise: torch.Tensor, *, top_k: int, mask_prob: float) -> torch.Tensor:
    """Reference STKIM: per (bag, branch) row, mask ⌊K·p⌋ of its top-K instances chosen by `noise`.

    Args:
        scores: `[B, M, N]` logits; noise: `[B, M, K']` uniform draws, `K' = min(K, N)`.
    Returns:
        Boolean `[B, M, N]`, True = masked.
    """
    b, m, n = scores.shape
    k = min(top_k, n)
    n_mask = int(k * mask_prob)
    masked = torch.zeros(b, m, n, dtype=torch.bool, device=scores.device)
    for i in range(b):
        for j in range(m):
            top = scores[i, j].topk(k).indices
            chosen = noise[i, j, :k].argsort()[:n_mask]  # a uniform random subset of the top-K
            masked[i, j, top[chosen]] = True
    return masked


def acmil_pool(scores: torch.Tensor, noise: torch.Tensor | None, *, top_k: int, mask_prob: float
               ) -> torch.Tensor:
    """Reference branch weights `softmax(A_m)` `[B, M, N]`, STKIM-masked when `noise` is given (training)."""
    if noise is not None and top_k > 0 and mask_prob > 0:
        scores = scores.masked_fill(stkim_mask(scores, noise, top_k=top_k, mask_prob=mask_prob), MASKED_LOGIT)
    return torch.softmax(scores, dim=-1)


class ACMIL(nn.Module):
    """ACMIL pooling on a bag of instances `x [B, N, C]` (DimRed keeps width C).

    Returns `[B, N, C]` = `N · a_n · x'_n`, so the token mean of the output is the slide feature
    `z = Σ_n a_n x'_n` with `a = mean_m softmax(A_m)` (`bag_weights [B, N]`). In training the
    branch rows are STKIM-masked first, as in the official code. Per-branch features
    `z_m = softmax(A_m) X'` go to `branch_features [B, M, C]` and, with `n_classes > 0`, through one
    linear classifier each to `branch_logits [B, M, n_classes]` (a task adds their CE to its loss);
    `aux_loss` is the diversity loss (mean pairwise cosine similarity of the branch distributions).
    """

    def __init__(self, d_model: int, *, backend: Backend | str, n_branches: int, top_k: int,
                 mask_prob: float, hidden: int, n_classes: int = 0) -> None:
        super().__init__()
        self.top_k, self.mask_prob = top_k, mask_prob
        self.reduce = nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU())
        self.att_v = nn.Linear(d_model, hidden)
        self.att_u = nn.Linear(d_model, hidden)
        self.att_w = nn.Linear(hidden, n_branches)
        self.branch_w = nn.Parameter(torch.randn(n_branches, d_model, n_classes) * d_model ** -0.5) \
            if n_classes else None
        self.branch_b = nn.Parameter(torch.zeros(n_branches, n_classes)) if n_classes else None
        backend = Backend(backend)
        self.pool = acmil_pool if backend == Backend.REFERENCE else step(SPEC, backend)
        self.branch_features: torch.Tensor | None = None
        self.branch_logits: torch.Tensor | None = None
        self.bag_weights: torch.Tensor | None = None
        self.aux_loss: torch.Tensor | None = None

    def scores(self, xr: torch.Tensor) -> torch.Tensor:
        """Gated attention logits `A = W_a(tanh(X'V) ⊙ σ(X'U))ᵀ`: `[B, M, N]`."""
        return self.att_w(torch.tanh(self.att_v(xr)) * torch.sigmoid(self.att_u(xr))).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xr = self.reduce(x)
        a = self.scores(xr)
        noise = None
        if self.training and self.top_k > 0 and self.mask_prob > 0:
            noise = torch.rand(*a.shape[:2], min(self.top_k, a.shape[-1]), device=a.device)
        probs = self.pool(a, noise, top_k=self.top_k, mask_prob=self.mask_prob)  # [B, M, N]
        self.branch_features = probs @ xr
        if self.branch_w is not None:
            self.branch_logits = torch.einsum("bmc,mck->bmk", self.branch_features, self.branch_w) + self.branch_b
        self.aux_loss = diversity_loss(probs)
        bag = probs.mean(1)  # [B, N]
        self.bag_weights = bag.detach()
        return x.shape[1] * bag[..., None] * xr


def diversity_loss(probs: torch.Tensor) -> torch.Tensor:
    """Mean pairwise cosine similarity between the M branch distributions `[B, M, N]` (0 when M = 1)."""
    m = probs.shape[1]
    if m < 2:
        return probs.new_zeros(())
    u = torch.nn.functional.normalize(probs, dim=-1)
    sim = u @ u.transpose(1, 2)  # [B, M, M]
    off = ~torch.eye(m, dtype=torch.bool, device=probs.device)
    return sim[:, off].mean()


@register_method(SPEC)
def acmil(d_model: int, n_heads: int, *, backend: Backend | str = Backend.REFERENCE, causal: bool = False,
          n_branches: int = 5, top_k: int = 10, mask_prob: float = 0.6, hidden: int = 128,
          n_classes: int = 0) -> ACMIL:
    """Build ACMIL pooling on `x [B, N, C]` (`n_heads` unused; stochastic masking only in training)."""
    if causal:
        raise ValueError("ACMIL pools a bag: no causal form")
    return ACMIL(d_model, backend=backend, n_branches=n_branches, top_k=top_k, mask_prob=mask_prob,
                 hidden=hidden, n_classes=n_classes)
