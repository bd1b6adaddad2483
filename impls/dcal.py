"""Dual Cross-Attention Learning — "Dual Cross-Attention Learning for Fine-Grained Visual Categorization
and Object Re-Identification" (Zhu et al., CVPR 2022), arXiv 2205.02151.

GLCA: only the top-R tokens of the attention rollout's CLS row act as queries against all keys/values.
PWCA: queries of image 1 attend over the keys/values of images 1 and 2 concatenated (one softmax);
a training-time regulariser sharing the self-attention weights. Token 0 is the CLS token.

As a layer, `branch` picks one flavour (the mechanism the latency/correctness suites time). As the
paper's architecture (image_cls, `IMAGE_BRANCHES` on the factory): a CLS-token ViT of `branch="sa"`
layers (self-attention that keeps its probabilities for the chained rollout, and runs PWCA with a
partner from the training batch while training), one GLCA block with its own weights on top, and
at evaluation the sum of the SA and GLCA class probabilities.
"""

from __future__ import annotations

import torch
from torch import nn

from attnbench.flops import SOFTMAX_FLOPS_PER_SCORE
from attnbench.impls.mdha import proj_flops
from attnbench.ops import dense_attention
from attnbench.registry import register_method, step
from attnbench.spec import AttentionSpec, Backend, Capabilities, FlopCount, Paper, Params, Workload

BRANCHES = ("glca", "pwca", "sa")


def n_local(n: int, r_ratio: float) -> int:
    """R, the number of local queries GLCA keeps: `max(1, round(r_ratio·N))`, at most N."""
    return min(n, max(1, round(r_ratio * n)))


def dcal_flops(w: Workload, params: Params) -> FlopCount:
    """GLCA: QKV `6·B·N·C²`, CLS row `2·B·H·N·D`, `4·B·H·R·N·D`, output projection of R rows `2·B·R·C²`.

    SA: `4·B·H·N²·D` and `8·B·N·C²` (the rollout probabilities are not counted).

    PWCA: QKV of both images `12·B·N·C²`, `4·B·H·N·2N·D`, output projection `2·B·N·C²`.
    """
    b, h, n, d = w.batch, w.heads_q, w.seq_q, w.head_dim
    if params["branch"] == "sa":
        useful = 4.0 * b * h * n * n * d + proj_flops(w, 4)
        return FlopCount(useful=useful, executed=useful, softmax=SOFTMAX_FLOPS_PER_SCORE * b * h * n * n)
    if params["branch"] == "pwca":
        pairs = n * 2 * n
        useful = 4.0 * b * h * pairs * d + proj_flops(w, 7)
    else:
        r = n_local(n, params["r_ratio"])
        pairs = r * n + n
        useful = (4.0 * b * h * r * n * d + 2.0 * b * h * n * d + proj_flops(w, 3)
                  + proj_flops(w, 1, rows=b * r))
    return FlopCount(useful=useful, executed=useful, softmax=SOFTMAX_FLOPS_PER_SCORE * b * h * pairs)


def _check(w: Workload, params: Params) -> str | None:
    if params["branch"] not in BRANCHES:
        return f"unknown branch {params['branch']!r}; valid: {', '.join(BRANCHES)}"
    if not 0 < params["r_ratio"] <= 1:
        return f"r_ratio must be in (0, 1], got {params['r_ratio']}"
    return None


SPEC = AttentionSpec(
    name="dcal",
    title="Dual cross-attention learning (GLCA / PWCA)",
    paper=Paper("Dual Cross-Attention Learning for Fine-Grained Visual Categorization and Object "
                "Re-Identification", 2022, "2205.02151"),
    family="sparse-dynamic",
    kind="layer",
    defaults={"branch": "glca", "r_ratio": 0.1},
    capabilities=Capabilities(causal=False, noncausal=True),
    flops=dcal_flops,
    check=_check,
    claims=("R50-ViT-B: CUB 92.0, Cars 95.3, Aircraft 93.3; DeiT-T +2.5 on CUB; MSMT17 mAP +2.8 (DeiT-T).",),
)


def attention_rollout(probs: list[torch.Tensor]) -> torch.Tensor:
    """Rollout `Ŝ_i = S̄_i S̄_{i−1} … S̄_1`, `S̄ = 0.5·mean_heads(P) + 0.5·I`: `[B, N, N]`, rows sum to 1.

    Args:
        probs: attention probabilities `[B, H, N, N]` of blocks 1…i (first block first).
    """
    out = None
    for p in probs:
        s_bar = 0.5 * p.mean(1) + 0.5 * torch.eye(p.shape[-1], dtype=p.dtype, device=p.device)
        out = s_bar if out is None else s_bar @ out
    if out is None:
        raise ValueError("attention_rollout needs at least one block")
    return out


def top_local(cls_row: torch.Tensor, r: int) -> torch.Tensor:
    """Indices `[B, R]` (ascending) of the R largest entries of the rollout CLS row `[B, N]`."""
    return cls_row.topk(r, dim=-1).indices.sort(dim=-1).values


def dcal_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, r: int = 0,
              rollout: torch.Tensor | None = None, kv2: tuple[torch.Tensor, torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reference GLCA (`r` > 0), PWCA (`kv2` set) or plain self-attention (neither) step on `[B, H, N, D]`.

    GLCA: eager probabilities `P`, this block's rollout (times the earlier blocks' `rollout [B, N, N]`
    when given), top-R of its CLS row, and those rows of `P @ V`: returns `([B, H, R, D], idx [B, R])`.
    PWCA: `softmax(q [K; K2]ᵀ/√D) [V; V2]`: returns `([B, H, N, D], None)`.
    """
    if kv2 is not None:
        return dense_attention(q, torch.cat([k, kv2[0]], 2), torch.cat([v, kv2[1]], 2)), None
    if r <= 0:
        return dense_attention(q, k, v), None
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    p = torch.softmax((q.to(acc) @ k.to(acc).transpose(-1, -2)) * q.shape[-1] ** -0.5, dim=-1)
    roll = attention_rollout([p])
    if rollout is not None:
        roll = roll @ rollout.to(acc)
    idx = top_local(roll[:, 0], r)
    rows = p.gather(2, idx[:, None, :, None].expand(-1, p.shape[1], -1, p.shape[-1]))
    return (rows @ v.to(acc)).to(q.dtype), idx


class DCAL(nn.Module):
    """One DCAL attention layer on `x [B, N, C]` (token 0 = CLS).

    `branch="glca"`: GLCA outputs are written at the R selected token rows, other rows are 0 (the
    residual carries them); set `prior_rollout [B, N, N]` to the earlier blocks' rollout, or
    `prior_probs` to their probabilities (first block first) to have it chained here.
    `branch="pwca"`: every token attends over its own image and a partner image (`pair [B, N, C]`,
    by default the batch rolled by one); use it in training only, as in the paper.
    `branch="sa"`: self-attention (SA block of the architecture); with `keep_probs` it stores its
    head probabilities `probs [B, H, N, N]` (eager, detached: they only rank tokens) for the rollout;
    with `pair` set it runs PWCA on the same weights instead (training only).
    """

    def __init__(self, d_model: int, n_heads: int, *, backend: Backend | str, causal: bool, branch: str,
                 r_ratio: float) -> None:
        super().__init__()
        if causal:
            raise ValueError("DCAL is a ViT mechanism: no causal form")
        if branch not in BRANCHES:
            raise ValueError(f"unknown branch {branch!r}; valid: {', '.join(BRANCHES)}")
        self.n_heads, self.head_dim, self.branch, self.r_ratio = n_heads, d_model // n_heads, branch, r_ratio
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.prior_rollout: torch.Tensor | None = None
        self.prior_probs: list[torch.Tensor] | None = None
        self.pair: torch.Tensor | None = None
        self.keep_probs = False
        self.probs: torch.Tensor | None = None
        backend = Backend(backend)
        self.attend = dcal_step if backend == Backend.REFERENCE else step(SPEC, backend)
        self.aux_loss = None

    def _qkv(self, x: torch.Tensor) -> list[torch.Tensor]:
        b, n, _ = x.shape
        return list(self.qkv(x).view(b, n, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self._qkv(x)
        if self.branch == "sa" and self.pair is None:
            if self.keep_probs:
                with torch.no_grad():
                    self.probs = torch.softmax((q @ k.transpose(-1, -2)).float() * self.head_dim ** -0.5, -1)
            o, _ = self.attend(q, k, v)
            return self.out(o.transpose(1, 2).reshape(b, n, c))
        if self.branch in ("pwca", "sa"):
            _, k2, v2 = self._qkv(self.pair if self.pair is not None else x.roll(1, dims=0))
            o, _ = self.attend(q, k, v, kv2=(k2, v2))
            return self.out(o.transpose(1, 2).reshape(b, n, c))
        prior = self.prior_rollout
        if prior is None and self.prior_probs:
            prior = attention_rollout(self.prior_probs)
        o, idx = self.attend(q, k, v, r=n_local(n, self.r_ratio), rollout=prior)
        local = self.out(o.transpose(1, 2).reshape(b, idx.shape[1], c))
        return x.new_zeros(b, n, c).scatter(1, idx[..., None].expand(-1, -1, c), local)


@register_method(SPEC)
def dcal(d_model: int, n_heads: int, *, backend: Backend | str = Backend.REFERENCE, causal: bool = False,
         branch: str = "glca", r_ratio: float = 0.1) -> DCAL:
    """Build a DCAL layer (GLCA, PWCA or SA branch) on `x [B, N, C]`, attention step by `backend`."""
    return DCAL(d_model, n_heads, backend=backend, causal=causal, branch=branch, r_ratio=r_ratio)


# The image architecture this layer belongs to (read by image models, see the module docstring):
# stack branch, top-block branch, training-only regulariser.
dcal.image_branches = ("sa", "glca", "pwca")  # type: ignore[attr-defined]
