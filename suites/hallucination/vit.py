"""Head analysis of an image-classification ViT, with per-head attention-pattern clustering.

The ViT (image_cls style, its own small copy): 2×2 patches of scikit-learn's 8×8 digits (a base
dependency, nothing fetched) → linear embedding + CLS + learned positions → non-causal pre-LN blocks
(the method under test + MLP) → LN → CLS → linear head; trained briefly with AdamW.

Pattern clustering (the visual-analytics reading of ViT heads, e.g. Li et al. 2023, "Does Attention
Work in Vision Transformers? A Visual Analytics Attempt"): each head gets a pattern feature vector —
its attention-distance profile over the patch grid (mass per rounded distance, normalised), mean
attention distance, row entropy, CLS mass and self (diagonal) mass — standardised over all heads and
clustered with k-means; `pattern_cluster` rows give each head's cluster, and `cluster_svg` draws the
layer × head cluster map next to the cluster centroids' distance profiles.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from attnbench.layers import build_layer
from attnbench.proxy.train import Block, TrainConfig, seed_all, train

GRID = (4, 4)  # 8×8 digits in 2×2 patches


class TinyViT(nn.Module):
    def __init__(self, method: str, params: Mapping[str, Any] | None = None, d_model: int = 32, n_layers: int = 2,
                 n_heads: int = 2, n_classes: int = 10, patch_dim: int = 4) -> None:
        super().__init__()
        n = GRID[0] * GRID[1]
        self.patch = nn.Linear(patch_dim, d_model)
        self.cls = nn.Parameter(torch.randn(1, 1, d_model) * 0.02)
        self.pos = nn.Parameter(torch.randn(n + 1, d_model) * 0.02)
        self.blocks = nn.ModuleList(
            Block(build_layer(method, "reference", d_model, n_heads, causal=False, params=dict(params or {})),
                  d_model, True, True) for _ in range(n_layers))
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_classes)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.cls.expand(len(patches), -1, -1), self.patch(patches)], 1) + self.pos
        for blk in self.blocks:
            h = blk(h)
        return self.head(self.ln(h[:, 0]))

    def aux_loss(self) -> torch.Tensor | None:
        terms = [a for blk in self.blocks if (a := getattr(blk.attn, "aux_loss", None)) is not None]
        return torch.stack([torch.as_tensor(t).reshape(()) for t in terms]).sum() if terms else None


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as patches `[n, 16, 4]` in [0, 1] and labels `[n]`."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.reshape(-1, 4, 2, 4, 2).transpose(0, 1, 3, 2, 4).reshape(-1, 16, 4) / 16.0
    return torch.tensor(x, dtype=torch.float32), torch.tensor(d.target)


def train_vit(method: str = "mha", seed: int = 0, steps: int = 300) -> tuple[TinyViT, float]:
    """A trained TinyViT and its held-out accuracy (the last 30% of the digits)."""
    x, y = digits()
    cut = int(0.7 * len(x))
    seed_all(seed)
    model = TinyViT(method)
    rng = np.random.default_rng(seed)

    def batch_fn(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(rng.integers(0, cut, 64))
        return x[idx], y[idx]

    def loss_fn(m: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(m(b[0]), b[1])

    train(model, batch_fn, loss_fn, TrainConfig(steps=steps, lr=3e-3, warmup=20, schedule_steps=steps))  # type: ignore[arg-type]
    model.eval()
    with torch.no_grad():
        acc = float((model(x[cut:]).argmax(-1) == y[cut:]).float().mean())
    return model, acc


def pattern_features(p: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-head pattern features `[H, F]` and distance profiles `[H, R]` of `P [B, H, 1 + n, 1 + n]` (CLS first)."""
    from attnbench.suites.hallucination.analysis import distance_profile, entropy

    prof, mean_r = distance_profile(p, GRID, offset=1)
    mass = prof * torch.bincount(_dist().flatten()).double() / (GRID[0] * GRID[1])  # per query, per distance
    mass = mass / mass.sum(-1, keepdim=True).clamp_min(1e-30)
    cls_mass = p[..., 0].mean((0, 2)).double()
    self_mass = torch.diagonal(p, dim1=-2, dim2=-1).mean((0, 2)).double()
    feats = torch.cat([mass, mean_r[:, None], entropy(p).double()[:, None], cls_mass[:, None], self_mass[:, None]], 1)
    return feats.numpy(), mass.numpy()


def _dist() -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(GRID[0]), torch.arange(GRID[1]), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], -1).double()
    return torch.cdist(pos, pos).round().long()


def cluster_heads(feats: np.ndarray, k: int = 3, seed: int = 0) -> np.ndarray:
    """k-means labels `[n_heads]` of standardised pattern features (k capped by the number of heads)."""
    from sklearn.cluster import KMeans

    z = (feats - feats.mean(0)) / np.where(feats.std(0) > 0, feats.std(0), 1.0)
    k = max(1, min(k, len(np.unique(z.round(9), axis=0))))
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(z)


def analyze_vit(model: nn.Module | None = None, *, method: str = "mha", seed: int = 0, steps: int | None = None,
                n_probe: int = 128, k: int = 3) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """`[L, H]` scores of a ViT (trained on digits when None): importance, entropy, distance, CLS/self mass and
    `pattern_cluster`; plus the per-head distance profiles `[L·H, R]` for the figure."""
    from attnbench.suites.hallucination.analysis import attention_layers, capture, head_importance

    acc = float("nan")
    if model is None:
        model, acc = train_vit(method, seed, steps or 300)
    model.eval()
    x, y = digits()
    x, y = x[-n_probe:], y[-n_probe:]

    def target(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pr = logits.float().softmax(-1)
        return (nn.functional.cross_entropy(logits.float(), y), (pr.argmax(-1) == y).float().mean(),
                pr.gather(1, y[:, None]).mean())

    _, caps = capture(model, x)
    feats, profiles = zip(*(pattern_features(c.probs()) for c in caps), strict=True)
    n_l, n_h = len(caps), max(lay.n_heads for lay in attention_layers(model))
    labels = cluster_heads(np.concatenate(feats), k, seed).reshape(n_l, n_h)
    scores = {f"head_importance_{m}": v for m, v in head_importance(model, (x,), target).items()}
    stats = torch.tensor(np.stack(feats))  # [L, H, F]
    r = profiles[0].shape[1]
    scores.update(attn_distance=stats[..., r].float(), attn_entropy=stats[..., r + 1].float(),
                  cls_mass=stats[..., r + 2].float(), self_mass=stats[..., r + 3].float(),
                  pattern_cluster=torch.tensor(labels, dtype=torch.float32))
    if acc == acc:
        scores["vit_top1"] = torch.full((n_l, n_h), acc)
    return scores, np.concatenate(profiles)


def cluster_svg(rows: Sequence[Mapping[str, Any]], profiles: np.ndarray | None = None) -> str:
    """Layer × head map of `pattern_cluster`, and (with `profiles [L·H, R]`) each cluster's mean distance profile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from attnbench.suites.hallucination.analysis import rows_grid

    grid = rows_grid(rows, "pattern_cluster").numpy()
    k = int(np.nanmax(grid)) + 1
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(7.5, 1.6 + 0.45 * grid.shape[0]))
    im = ax.imshow(grid, cmap=plt.get_cmap("tab10", max(k, 2)), vmin=-0.5, vmax=max(k, 2) - 0.5, aspect="auto")
    ax.set(xlabel="head", ylabel="layer", title="attention-pattern cluster", xticks=range(grid.shape[1]),
           yticks=range(grid.shape[0]))
    fig.colorbar(im, ax=ax, ticks=range(k), fraction=0.08)
    if profiles is not None:
        flat = grid.flatten()
        for c in range(k):
            if (flat == c).any():
                ax2.plot(profiles[flat == c].mean(0), marker="o", label=f"cluster {c}", color=plt.get_cmap("tab10")(c))
        ax2.set(xlabel="patch distance", ylabel="attention mass", title="cluster distance profiles")
        ax2.legend(fontsize=7)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    return buf.getvalue()
