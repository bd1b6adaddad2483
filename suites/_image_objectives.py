"""Self-supervised objectives of the image_cls suite (`objective = simclr | amcl`), scored by linear probe.

AMCL — Wang, Koniusz, Gedeon, Zheng, "Adaptive Multi-head Contrastive Learning", ECCV 2024,
arXiv 2310.05615. Not an attention mechanism (methods-modeling card, section C): a pre-training loss,
so it is an image_cls training option, not a registry row. H projection heads each give their own
similarity s^h_ij = cos(z^h_i, z^h_j); each pair gets its own temperature
`τ^h_ij = τ₀·exp(α_h·s^h_ij + β_h)` (α, β learned per head, log-ratio clamped to ±`max_log`), the
InfoNCE terms are averaged over heads, and `λ·mean(log(τ/τ₀))²` keeps the temperatures from the
degenerate solutions (τ → ∞ flattens every logit). The paper derives its temperatures from an MLE
over head-wise posteriors; the exact parametrisation here is **[unverified]** (paper text not read
in full): it keeps the paper's two properties, per-pair adaptive temperature and several heads.
With α = β = 0 and one head the loss is SimCLR's NT-Xent at τ₀ (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.proxy import data as proxydata


def info_nce(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """SimCLR's NT-Xent over 2B views: `z1, z2 [B, P]` (normalised inside), fixed temperature."""
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    s = z @ z.T / tau
    s.fill_diagonal_(float("-inf"))
    b = len(z1)
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
    return F.cross_entropy(s, target)


class ContrastiveObjective(nn.Module):
    """SimCLR (`heads=1`, `adaptive=False`) or AMCL on pooled features `[B, C]` of two views."""

    def __init__(self, d_model: int, *, heads: int = 1, adaptive: bool = False, proj_dim: int = 32,
                 tau: float = 0.2, reg: float = 0.1, max_log: float = 2.0) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(), nn.Linear(d_model, proj_dim))
                                   for _ in range(heads))
        self.adaptive, self.tau, self.reg, self.max_log = adaptive, tau, reg, max_log
        self.alpha = nn.Parameter(torch.zeros(heads)) if adaptive else None
        self.beta = nn.Parameter(torch.zeros(heads)) if adaptive else None

    def log_ratio(self, s: torch.Tensor, h: int) -> torch.Tensor:
        """log(τ_ij/τ₀) of head `h` for similarities `s [2B, 2B]` (zeros when not adaptive)."""
        if self.alpha is None or self.beta is None:
            return torch.zeros_like(s)
        return (self.alpha[h] * s + self.beta[h]).clamp(-self.max_log, self.max_log)

    def forward(self, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        b = len(f1)
        target = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(f1.device)
        eye = torch.eye(2 * b, dtype=torch.bool, device=f1.device)
        total = f1.new_zeros(())
        for h, head in enumerate(self.heads):
            z = F.normalize(head(torch.cat([f1, f2])).float(), dim=-1)
            s = z @ z.T
            lr = self.log_ratio(s, h)
            logits = (s / (self.tau * torch.exp(lr))).masked_fill(eye, float("-inf"))
            total = total + F.cross_entropy(logits, target)
            if self.adaptive:
                total = total + self.reg * lr.masked_fill(eye, 0).pow(2).sum() / (4 * b * b - 2 * b)
        return total / len(self.heads)


def objective_for(name: str, d_model: int, heads: int) -> ContrastiveObjective:
    """`simclr`: one head, fixed τ; `amcl`: `heads` heads with per-pair adaptive temperatures."""
    if name == "simclr":
        return ContrastiveObjective(d_model)
    if name == "amcl":
        return ContrastiveObjective(d_model, heads=heads, adaptive=True)
    raise ValueError(f"unknown objective {name!r}; valid: simclr, amcl")


def two_views(x: torch.Tensor, shift: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two augmentations of images `[B, H, W, C]`: random shift (± max(shift, 2) px) and random
    horizontal flip, drawn independently per view."""
    def view() -> torch.Tensor:
        v = proxydata.random_shift(x, max(shift, 2), gen)
        flip = torch.rand(len(v), generator=gen) < 0.5
        return torch.where(flip[:, None, None, None].to(v.device), v.flip(2), v)

    return view(), view()


def linear_probe(f_train: torch.Tensor, y_train: torch.Tensor, f_test: torch.Tensor, y_test: torch.Tensor,
                 n_classes: int, steps: int = 300, lr: float = 0.05) -> float:
    """Top-1 of a linear classifier trained (full batch, Adam, weight decay 1e-4) on frozen,
    standardised features."""
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-6
    a, t = (f_train - mu) / sd, (f_test - mu) / sd
    lin = nn.Linear(a.shape[1], n_classes)
    opt = torch.optim.Adam(lin.parameters(), lr=lr, weight_decay=1e-4)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(lin(a), y_train).backward()
            opt.step()
    with torch.no_grad():
        return float((lin(t).argmax(-1) == y_test).float().mean())
