"""SpectFormer: Frequency and Attention is what you need in a Vision Transformer — Patro et al., 2023,
arXiv 2304.06446. The spectral gating layer: FFT over the token grid, a learnable complex filter per
(frequency, channel), inverse FFT (a learned global circular convolution, O(N log N)).

SpectFormer itself is a hybrid: spectral gating in the first α layers, MHSA in the rest. The spec's
`layout` (`spectformer_layout`) is that plan, so the proxies train the paper's model: `alpha` spectral
layers (default: the paper's 4 of 12, a third of the depth, at least one), then `mha`. `alpha` equal
to the depth is the all-spectral (GFNet-like) stack; `alpha=0` is the plain attention stack. As a
single layer (latency, correctness, FLOPs) `spectformer` is the spectral gating layer.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attnbench.registry import register_method, step
from attnbench.spec import AttentionSpec, Backend, Capabilities, FlopCount, Paper, Params, Workload


def grid_of(n: int) -> tuple[int, int]:
    """The most square (a, b) with a·b = n and a ≤ b."""
    a = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return a, n // a


def adapt(w: Workload, params: Params) -> Workload:
    """A 1-D workload runs on the most square 2-D grid of its length."""
    return w if w.spatial is not None else w.replace(spatial=grid_of(w.seq_q))


def spectformer_flops(w: Workload, params: Params) -> FlopCount:
    """Card §11: 5·N·log2(N)·C for both transforms + 6·a(⌊b/2⌋+1)·C for the complex product."""
    a, b = (w.spatial or grid_of(w.seq_q))[-2:]
    n, c = w.seq_q, w.d_model
    useful = w.batch * (5.0 * n * math.log2(n) * c + 6.0 * a * (b // 2 + 1) * c)
    return FlopCount(useful=useful, executed=useful)


def spectral_layers(n_layers: int, alpha: int | None) -> int:
    """α for a depth: `alpha` itself (0…depth), or (None) the paper's 4/12 ratio, at least one."""
    if alpha is None:
        return min(n_layers, max(1, round(n_layers / 3)))
    if not 0 <= int(alpha) <= n_layers:
        raise ValueError(f"spectformer: alpha={alpha} spectral layers do not fit a depth of {n_layers}")
    return int(alpha)


def spectformer_layout(n_layers: int, params: Params) -> tuple[str, ...]:
    """The paper's plan: α spectral gating layers (`spectformer`), then MHSA (`mha`)."""
    a = spectral_layers(n_layers, params["alpha"])
    return ("spectformer",) * a + ("mha",) * (n_layers - a)


SPEC = AttentionSpec(
    name="spectformer",
    title="Spectral gating (SpectFormer)",
    paper=Paper("SpectFormer: Frequency and Attention is what you need in a Vision Transformer", 2023,
                "2304.06446"),
    family="spectral",
    kind="layer",
    defaults={"init_std": 0.02, "alpha": None},
    capabilities=Capabilities(causal=False, noncausal=True, gqa=False, dims=(2,)),
    flops=spectformer_flops,
    adapt=adapt,
    layout=spectformer_layout,
    claims=("SpectFormer-S 84.25% and SpectFormer-L 85.7% ImageNet top-1; +2% over GFNet-H and LiT.",),
)


def _inverse_real_dft(b: int) -> torch.Tensor:
    """`[⌊b/2⌋+1, b]` complex rows c_k·e^{+2πi·kn/b}/√b; Re(Y @ G) is the orthonormal irfft of Y."""
    k = torch.arange(b // 2 + 1, dtype=torch.float64)
    c = torch.full_like(k, 2.0)
    c[0] = 1.0
    if b % 2 == 0:
        c[-1] = 1.0
    ang = 2 * math.pi * k[:, None] * torch.arange(b, dtype=torch.float64)[None] / b
    return torch.polar(c[:, None] / math.sqrt(b), ang)


def _dft(n: int) -> torch.Tensor:
    """`[n, n]` orthonormal DFT matrix e^{-2πi·jk/n}/√n (complex128)."""
    j = torch.arange(n, dtype=torch.float64)
    mag = torch.full((n, n), n ** -0.5, dtype=torch.float64)
    return torch.polar(mag, -2 * math.pi * j[:, None] * j[None] / n)


def spectral_filter(x: torch.Tensor, weight: torch.Tensor, *, spatial: tuple[int, int]) -> torch.Tensor:
    """Reference step: the orthonormal 2-D real DFT as explicit matmuls (complex128), × W, inverse.

    Args:
        x: `[B, N, C]` with N = a·b. weight: complex `[a, ⌊b/2⌋+1, C]`. spatial: (a, b).
    Returns:
        `[B, N, C]` in x's dtype.
    """
    a, b = spatial
    xg = x.to(torch.float64).unflatten(1, (a, b)).to(torch.complex128)
    fa, fb = _dft(a).to(x.device), _dft(b)[:, : b // 2 + 1].to(x.device)
    spec = torch.einsum("ij,bjkc,kl->bilc", fa, xg, fb) * weight.to(torch.complex128)
    spec = torch.einsum("ij,bjlc->bilc", fa.conj(), spec)  # inverse along a (complex)
    y = torch.einsum("bilc,ln->binc", spec, _inverse_real_dft(b).to(x.device)).real
    return y.flatten(1, 2).to(x.dtype)


class SpectralGating(nn.Module):
    """Spectral gating layer on `x [B, N, C]` over the grid `spatial = (a, b)`, N = a·b.

    Args:
        d_model: C. n_heads: ignored. spatial: the token grid (required: W is `[a, ⌊b/2⌋+1, C]`).
        init_std: W starts as N(0, init_std²) per real and imaginary part (0.02 in the paper).
        alpha: the model plan's spectral depth (`spectformer_layout`); unused by the layer.
    """

    def __init__(self, d_model: int, n_heads: int, *, backend: Backend | str, causal: bool = False,
                 spatial: tuple[int, ...] | None = None, init_std: float = 0.02, alpha: int | None = None
                 ) -> None:
        super().__init__()
        if causal:
            raise ValueError("spectformer has no causal form (the filter is a global circular conv)")
        if spatial is None or len(spatial) != 2:
            raise ValueError(f"spectformer needs a 2-D token grid `spatial=(a, b)`, got {spatial}")
        self.spatial = (int(spatial[0]), int(spatial[1]))
        a, b = self.spatial
        self.weight = nn.Parameter(torch.randn(a, b // 2 + 1, d_model, 2) * init_std)  # real view of W
        self.aux_loss: torch.Tensor | None = None
        self.attend = spectral_filter if Backend(backend) is Backend.REFERENCE else step(SPEC, backend)

    @property
    def filter(self) -> torch.Tensor:
        """W as a complex `[a, ⌊b/2⌋+1, C]` tensor (computed in fp32 or fp64)."""
        w = self.weight if self.weight.dtype == torch.float64 else self.weight.float()
        return torch.view_as_complex(w.contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x [B, N, C]` → `[B, N, C]`."""
        return self.attend(x, self.filter, spatial=self.spatial)


@register_method(SPEC)
def spectformer(d_model: int, n_heads: int, *, backend: Backend | str, causal: bool = False,
                spatial: tuple[int, ...] | None = None, init_std: float = 0.02, alpha: int | None = None
                ) -> SpectralGating:
    """Build a spectral gating layer for the token grid `spatial`."""
    return SpectralGating(d_model, n_heads, backend=backend, causal=causal, spatial=spatial,
                          init_std=init_std)


def spectformer_mixers(depth: int, d_model: int, n_heads: int, *, spatial: tuple[int, int], alpha: int = 4,
                       backend: Backend | str = Backend.NATIVE, mha_backend: Backend | str = Backend.SDPA
                       ) -> nn.ModuleList:
    """Token mixers of a SpectFormer stack (`spectformer_layout`): spectral gating in layers < α,
    MHSA (`mha`) after, for a trainer other than the proxy model (which builds the layout itself).

    The paper's spectral block is `x + MLP(LN(SGN(LN x)))` (one residual branch); a trainer that
    uses standard pre-norm blocks gets `x + SGN(LN x)` then its MLP, a small deviation.
    """
    from attnbench.layers import build_layer

    return nn.ModuleList(
        SpectralGating(d_model, n_heads, backend=backend, spatial=spatial) if name == "spectformer"
        else build_layer("mha", mha_backend, d_model, n_heads)
        for name in spectformer_layout(depth, {"alpha": alpha}))
