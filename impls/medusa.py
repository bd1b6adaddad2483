"""MEDUSA: Multi-scale Encoder-Decoder Self-Attention — Aboutalebi et al., "MEDUSA: Multi-Scale
Encoder-Decoder Self-Attention Deep Neural Network Architecture for Medical Image Analysis", Frontiers in
Medicine 2022, arXiv 2110.06063. **Gating, not attention**: no query-key scores.

One shared encoder-decoder "attention body" turns the features into a map M; per scale s a head
`h_s` reads M pooled to that scale and gives a sigmoid gate; the features are multiplied by the
gates brought back to the grid (each s×s cell shares its gate):
`y = x ⊙ mean_s up_s(σ(h_s(pool_s M)))`. The card (methods-modeling A9) marks the internals
unverified (no official code): the body here is a two-level conv U-Net.
Invariant: gate ≡ 1 is the identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.impls.spectformer import grid_of
from attnbench.registry import register_method, step
from attnbench.spec import AttentionSpec, Backend, Capabilities, FlopCount, Paper, Params, Workload


def adapt(w: Workload, params: Params) -> Workload:
    """A 1-D workload runs on the most square 2-D grid of its length."""
    return w if w.spatial is not None else w.replace(spatial=grid_of(w.seq_q))


def body_dim(d_model: int, ratio: float) -> int:
    """Channels m of the attention body: round(C·ratio), at least 4."""
    return max(4, round(d_model * ratio))


def _cells(h: int, w: int, s: int) -> int:
    return math.ceil(h / s) * math.ceil(w / s)


def medusa_flops(w: Workload, params: Params) -> FlopCount:
    """Body: 1×1 conv `2·N·C·m`, 3×3 conv at half resolution `18·N/4·m²`; heads `2·N_s·m·C` per
    scale; gate mean and product `(S+1)·N·C` (pooling, upsampling and sigmoids not counted)."""
    h, wd = w.spatial or grid_of(w.seq_q)
    n, c = h * wd, w.d_model
    m, scales = body_dim(c, params["body_ratio"]), params["scales"]
    useful = 2.0 * n * c * m + 18.0 * _cells(h, wd, 2) * m * m
    useful += sum(2.0 * _cells(h, wd, s) * m * c for s in scales) + (len(scales) + 1) * n * c
    return FlopCount(useful=w.batch * useful, executed=w.batch * useful)


def _check(w: Workload, params: Params) -> str | None:
    scales = params["scales"]
    if not scales or any(int(s) < 1 for s in scales):
        return f"scales must be positive integers, got {scales}"
    return None


SPEC = AttentionSpec(
    name="medusa",
    title="MEDUSA multi-scale spatial gating (gating, not attention)",
    paper=Paper("MEDUSA: Multi-Scale Encoder-Decoder Self-Attention Deep Neural Network Architecture for "
                "Medical Image Analysis", 2022, "2110.06063"),
    family="gating",
    kind="layer",
    defaults={"scales": (1, 2, 4), "body_ratio": 0.25},
    capabilities=Capabilities(causal=False, noncausal=True, gqa=False, dims=(2,)),
    flops=medusa_flops,
    adapt=adapt,
    check=_check,
    claims=("Gating, not attention: no query-key scores; a spatial gating baseline in the image track.",
            "Single attention body with multi-scale heads on a CNN: state of the art on COVIDx, RSNA RICORD and "
            "RSNA Pneumonia (abstract; per-benchmark numbers not checked here)."),
)


def gate_features(x: torch.Tensor, logits: list[torch.Tensor], scales: tuple[int, ...]) -> torch.Tensor:
    """Reference step: `x ⊙ mean_s up_s(σ(logit_s))`; `up_s` repeats each cell s×s times (the
    inverse of the ceil-mode s×s pooling) and crops to the grid.

    Args:
        x: features `[B, C, h, w]`; logits: per scale s `[B, C, ⌈h/s⌉, ⌈w/s⌉]`.
    """
    h, w = x.shape[-2:]
    gate = torch.stack([torch.sigmoid(g).repeat_interleave(s, -2).repeat_interleave(s, -1)[..., :h, :w]
                        for g, s in zip(logits, scales, strict=True)])
    return x * gate.mean(0)


class MedusaGate(nn.Module):
    """Multi-scale spatial gating on `x [B, N, C]` over the grid `spatial = (h, w)`.

    Args:
        d_model: C. n_heads: ignored (no heads). scales: the pooling factors s of the gate heads.
        body_ratio: m / C, the width of the shared encoder-decoder body.
    """

    def __init__(self, d_model: int, n_heads: int, *, backend: Backend | str, causal: bool = False,
                 spatial: tuple[int, ...] | None = None, scales: tuple[int, ...] = (1, 2, 4),
                 body_ratio: float = 0.25) -> None:
        super().__init__()
        if causal:
            raise ValueError("medusa has no causal form (its convolutions see every token)")
        if spatial is None or len(spatial) != 2:
            raise ValueError(f"medusa needs a 2-D token grid `spatial=(h, w)`, got {spatial}")
        self.h, self.w, self.scales = int(spatial[0]), int(spatial[1]), tuple(int(s) for s in scales)
        m = body_dim(d_model, body_ratio)
        self.enc1 = nn.Conv2d(d_model, m, 1)  # encoder, full resolution
        self.enc2 = nn.Conv2d(m, m, 3, padding=1)  # encoder, half resolution
        self.heads = nn.ModuleList(nn.Conv2d(m, d_model, 1) for _ in self.scales)
        self.aux_loss: torch.Tensor | None = None
        self.attend = gate_features if Backend(backend) is Backend.REFERENCE else step(SPEC, backend)

    def body(self, g: torch.Tensor) -> torch.Tensor:
        """Encoder-decoder map M `[B, m, h, w]`: U-Net with one skip (decoder = upsample + add)."""
        e1 = F.gelu(self.enc1(g))
        e2 = F.gelu(self.enc2(F.avg_pool2d(e1, 2, ceil_mode=True)))
        return e1 + F.interpolate(e2, size=e1.shape[-2:], mode="nearest")

    def gate_logits(self, g: torch.Tensor) -> list[torch.Tensor]:
        """Per scale s: `h_s(pool_s(M))` `[B, C, ⌈h/s⌉, ⌈w/s⌉]`."""
        m = self.body(g)
        return [head(F.avg_pool2d(m, s, ceil_mode=True) if s > 1 else m) for s, head in zip(self.scales, self.heads,
                                                                                            strict=True)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x [B, N, C]` → `[B, N, C]`."""
        b, n, c = x.shape
        g = x.transpose(1, 2).reshape(b, c, self.h, self.w)
        return self.attend(g, self.gate_logits(g), self.scales).flatten(2).transpose(1, 2)


@register_method(SPEC)
def medusa(d_model: int, n_heads: int, *, backend: Backend | str, causal: bool = False,
           spatial: tuple[int, ...] | None = None, scales: tuple[int, ...] = (1, 2, 4),
           body_ratio: float = 0.25) -> MedusaGate:
    """Build a MEDUSA multi-scale gating layer for the token grid `spatial`."""
    return MedusaGate(d_model, n_heads, backend=backend, causal=causal, spatial=spatial, scales=scales,
                      body_ratio=body_ratio)
