"""Gaussian Adaptive Attention — "Gaussian Adaptive Attention is All You Need: Robust Contextual
Representations Across Multiple Modalities" (Ioannides et al., 2024), arXiv 2401.11143.

Not a q·k attention: each head owns a chunk of `C/H` channels, standardises it along an axis with
data statistics and multiplies it by a learned Gaussian density of the standardised value:
`y_i = (x − μ − δ_i)/σ`, `g = Σ_i softmax(w)_i exp(−y_i²/(2c_i²))`, `W = g / Σ_axis g`, `out = x ⊙ W`.
Variants (card A3): `v1_mixture_norm` (above, repo MHGAAM), `product_norm` (product of normalised
Gaussians, GaussianBlock) and `daam_unnorm` (per-feature `δ, c`, `exp(−y²/(2c))`, no normalisation
of `W`). `product_norm` is normalised in log space (a softmax, equal to `g / Σ g`): the product of
densities underflows for large `c`. The repo's `padding_value` (excluded from statistics) is not
implemented.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attnbench.registry import register_method, step
from attnbench.spec import AttentionSpec, Backend, Capabilities, FlopCount, Paper, Params, Workload

VARIANTS = ("v1_mixture_norm", "product_norm", "daam_unnorm")
AXES = {"seq": 1, "channel": 2}  # dims of x [B, N, C]

STATS_FLOPS = 4      # per element: mean and variance along the axis
GAUSSIAN_FLOPS = 7   # per element per Gaussian: −δ, ÷σ, square, ÷2c², exp, ×weight, +
NORM_FLOPS = 3       # per element: sum along the axis, divide, multiply x


def gaam_flops(w: Workload, params: Params) -> FlopCount:
    """Elementwise + reduction cost on `[B, N, C]`: `B·N·C·(4 + 7·G + 3)` (G = 1 for daam_unnorm)."""
    g = 1 if params["variant"] == "daam_unnorm" else params["num_gaussians"]
    total = float(w.batch * w.seq_q * w.d_model * (STATS_FLOPS + GAUSSIAN_FLOPS * g + NORM_FLOPS))
    return FlopCount(useful=total, executed=total)


def _check(w: Workload, params: Params) -> str | None:
    if params["variant"] not in VARIANTS:
        return f"unknown variant {params['variant']!r}; valid: {', '.join(VARIANTS)}"
    if params["norm_axis"] not in AXES:
        return f"unknown norm_axis {params['norm_axis']!r}; valid: {', '.join(AXES)}"
    if w.causal and params["norm_axis"] == "seq":
        return "statistics along the sequence see future tokens: no causal form with norm_axis='seq'"
    return None


SPEC = AttentionSpec(
    name="gaam",
    title="Gaussian adaptive attention (GAAM / DAAM)",
    paper=Paper("Gaussian Adaptive Attention is All You Need: Robust Contextual Representations Across "
                "Multiple Modalities", 2024, "2401.11143"),
    family="probabilistic",
    kind="layer",
    defaults={"variant": "v1_mixture_norm", "norm_axis": "seq", "num_gaussians": 4, "init_c": 2.0,
              "eps": 1e-8},
    capabilities=Capabilities(causal=True, noncausal=True),
    flops=gaam_flops,
    check=_check,
    claims=("Up to ~+20% accuracy vs dot-product attention; IEMOCAP (WavLM-L) DAAMv1 67.4 vs MHA 62.3; "
            "0.016–0.082 M extra parameters.",),
)


def gaussian_weights(x: torch.Tensor, delta: torch.Tensor, c: torch.Tensor, mix: torch.Tensor, *,
                     dim: int, variant: str, eps: float) -> torch.Tensor:
    """Density weights `W` of one head chunk, same shape as `x`.

    Args:
        x: one head's chunk, e.g. `[B, N, C/H]`; statistics along `dim`.
        delta, c, mix: `[G]` offsets, scales, mixture logits; for `daam_unnorm`, `[C/H]` per feature.
    """
    mu = x.mean(dim, keepdim=True)
    sigma = (x.var(dim, keepdim=True) + eps).sqrt()
    if variant == "daam_unnorm":  # per-feature δ, c; variance-style scale c; no normalisation
        y = (x - mu - delta) / sigma
        return torch.exp(-(y**2) / (2.0 * c))
    y = (x[None] - mu[None] - delta.view(-1, *[1] * x.dim())) / sigma[None]  # [G, *x.shape]
    c2 = (c**2).view(-1, *[1] * x.dim())
    if variant == "v1_mixture_norm":
        g = (torch.softmax(mix, 0).view(-1, *[1] * x.dim()) * torch.exp(-(y**2) / (2.0 * c2))).sum(0)
    else:  # product_norm, in log space: Π_i N(y_i; 0, c_i²) underflows for large c or many Gaussians
        log_g = (-(y**2) / (2.0 * c2) - 0.5 * torch.log(2.0 * math.pi * c2)).sum(0)
        return torch.softmax(log_g, dim=dim)  # = g / Σ_axis g
    return g / g.sum(dim, keepdim=True).clamp_min(eps)


def density_weights(x: torch.Tensor, delta: torch.Tensor, c: torch.Tensor, mix: torch.Tensor, *,
                    n_heads: int, norm_axis: str, variant: str, eps: float) -> torch.Tensor:
    """Reference density weights `W [B, N, C]`, head by head (fp32 accumulation).

    delta, c, mix: `[H, G]` (for `daam_unnorm`, delta and c are `[C]`).
    """
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xs = x.to(acc).chunk(n_heads, dim=-1)
    d = xs[0].shape[-1]
    out = []
    for h, xh in enumerate(xs):
        sl = slice(h * d, (h + 1) * d)
        dh, ch = (delta[sl], c[sl]) if variant == "daam_unnorm" else (delta[h], c[h])
        out.append(gaussian_weights(xh, dh.to(acc), ch.to(acc), mix[h].to(acc), dim=AXES[norm_axis],
                                    variant=variant, eps=eps))
    return torch.cat(out, dim=-1)


def gaam_step(x: torch.Tensor, delta: torch.Tensor, c: torch.Tensor, mix: torch.Tensor, *, n_heads: int,
              norm_axis: str, variant: str, eps: float) -> torch.Tensor:
    """Reference GAAM step: `out = x ⊙ W` on `x [B, N, C]`."""
    wts = density_weights(x, delta, c, mix, n_heads=n_heads, norm_axis=norm_axis, variant=variant, eps=eps)
    return (x.to(wts.dtype) * wts).to(x.dtype)


class GAAM(nn.Module):
    """Multi-head Gaussian adaptive attention on `x [B, N, C]`; heads own `C/H` channels each.

    `density(x)` returns the weights `W` (for the importance factor); `forward` returns `x ⊙ W`.
    """

    def __init__(self, d_model: int, n_heads: int, *, backend: Backend | str, causal: bool, variant: str,
                 norm_axis: str, num_gaussians: int, init_c: float, eps: float) -> None:
        super().__init__()
        if variant not in VARIANTS or norm_axis not in AXES:
            raise ValueError(f"variant in {VARIANTS}, norm_axis in {tuple(AXES)}; got {variant}, {norm_axis}")
        if causal and norm_axis == "seq":
            raise ValueError("GAAM with norm_axis='seq' has no causal form")
        self.n_heads, self.variant, self.norm_axis, self.eps = n_heads, variant, norm_axis, eps
        shape = (d_model,) if variant == "daam_unnorm" else (n_heads, num_gaussians)
        self.delta = nn.Parameter(torch.zeros(shape))  # δ = 0 (repo default)
        self.c = nn.Parameter(torch.full(shape, float(init_c)))  # c = 2 (repo default)
        self.mix = nn.Parameter(torch.zeros(n_heads, num_gaussians))  # softmax(0) = equal mixture
        backend = Backend(backend)
        self.attend = gaam_step if backend == Backend.REFERENCE else step(SPEC, backend)
        self.aux_loss = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(x, self.delta, self.c, self.mix, n_heads=self.n_heads, norm_axis=self.norm_axis,
                           variant=self.variant, eps=self.eps)

    @torch.no_grad()
    def density(self, x: torch.Tensor) -> torch.Tensor:
        """The density-attention weights `W [B, N, C]` (reference path), e.g. for `importance_factor`."""
        return density_weights(x, self.delta, self.c, self.mix, n_heads=self.n_heads,
                               norm_axis=self.norm_axis, variant=self.variant, eps=self.eps)


def importance_factor(density: torch.Tensor) -> torch.Tensor:
    """Importance Factor `IF = (DA − min DA)/(max DA − min DA)` of averaged density weights, e.g. `[L, C]`."""
    lo, hi = density.min(), density.max()
    return (density - lo) / (hi - lo).clamp_min(torch.finfo(density.dtype).tiny)


@register_method(SPEC)
def gaam(d_model: int, n_heads: int, *, backend: Backend | str = Backend.REFERENCE, causal: bool = False,
         variant: str = "v1_mixture_norm", norm_axis: str = "seq", num_gaussians: int = 4,
         init_c: float = 2.0, eps: float = 1e-8) -> GAAM:
    """Build a GAAM layer on `x [B, N, C]` (its fused step is selected by `backend`)."""
    return GAAM(d_model, n_heads, backend=backend, causal=causal, variant=variant, norm_axis=norm_axis,
                num_gaussians=num_gaussians, init_c=init_c, eps=eps)
