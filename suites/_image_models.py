"""Image-classification models of the image_cls suite; only the attention changes between methods.

* `ImageViT`: patch embedding [+ CLS token] + learned positions → pre-LN blocks (attention + MLP) →
  LN → CLS token or mean pool → linear head. With a CLS token, a method that needs the patch grid
  (`spatial`) runs on the patches only and the CLS token reads all tokens through a small dense
  attention of its own (`ClsGrid`), so the grid stays exact.
  A layer whose factory declares `image_branches = ("sa", "glca", "pwca")` (DCAL) is built as its
  paper's architecture: a stack of `branch="sa"` layers, one GLCA block with its own weights on
  the rollout chained through the stack, PWCA through the same stack in training only (partner
  drawn from the training batch), uncertainty-weighted losses, and at evaluation the sum of the SA
  and GLCA class probabilities.
* `SHViTNet`: SHViT's macro design (Yun & Ro, CVPR 2024): overlapping 3×3 stride-2 conv stem
  (total stride = `patch`, the suite's `shvit_stem`), stages joined by stride-2 conv downsampling,
  every block a depthwise-conv residual + [attention] + conv FFN, **no attention in the first
  stage**, global average pool. One width throughout (the paper widens per stage).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from attnbench.layers import build_layer
from attnbench.ops import dense_attention
from attnbench.proxy import data as proxydata
from attnbench.proxy.suite import accepts_spatial
from attnbench.proxy.train import Block, ModelConfig, ProxyModel, layer_plan
from attnbench.registry import METHODS
from attnbench.spec import Backend

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, soft targets) → loss


@dataclass(frozen=True)
class ImageModelConfig:
    method: str
    n_classes: int
    backend: str = "reference"
    params: dict[str, Any] = field(default_factory=dict)
    d_model: int = 64
    n_heads: int = 2
    kv_heads: int | None = None
    n_layers: int = 2
    patch: int = 4
    chans: int = 1
    grid: tuple[int, int] = (7, 7)  # patch grid (ViT) or stem output grid (SHViT, `patch` = stem stride)
    pool: str = "mean"  # cls | mean
    takes_grid: bool = False  # hand the token grid to the method (2-D methods)
    count_spatial: bool = False  # hand a 1-D `spatial = (tokens,)` instead (layers sized by token count)
    branches: tuple[str, ...] = ()  # the layer's image_branches (DCAL), () for plain layers
    shvit_depths: tuple[int, ...] = (1, 2)
    layers: tuple[str, ...] | None = None  # model plan (per-layer methods), None: the method's layout or copies


def shvit_grids(grid: tuple[int, int], depths: tuple[int, ...]) -> list[tuple[int, int]]:
    """Token grid of each SHViT stage: the stem grid, then ⌈/2⌉ per stride-2 downsampling."""
    out = [grid]
    for _ in depths[1:]:
        out.append((math.ceil(out[-1][0] / 2), math.ceil(out[-1][1] / 2)))
    return out


class ClsGrid(nn.Module):
    """A grid method on the patches; the CLS token (row 0) attends over every token densely."""

    def __init__(self, inner: nn.Module, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.inner, self.n_heads = inner, n_heads
        self.q, self.kv, self.out = nn.Linear(d_model, d_model), nn.Linear(d_model, 2 * d_model), nn.Linear(d_model,
                                                                                                               d_model)

    @property
    def aux_loss(self) -> torch.Tensor | None:
        return getattr(self.inner, "aux_loss", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        d = c // self.n_heads
        q = self.q(x[:, :1]).view(b, 1, self.n_heads, d).transpose(1, 2)
        k, v = self.kv(x).view(b, n, 2, self.n_heads, d).permute(2, 0, 3, 1, 4)
        cls = self.out(dense_attention(q, k, v).transpose(1, 2).reshape(b, 1, c))
        return torch.cat([cls, self.inner(x[:, 1:])], 1)


def _attention(cfg: ImageModelConfig, d_model: int, grid: tuple[int, int] | None, method: str | None = None,
               **extra: Any) -> nn.Module:
    """Layer of `method` (default: the case's, with its params and backend; another method of a
    model plan gets its defaults, the case's backend where it has it) for tokens on `grid`
    (+ CLS when pooled by CLS: grid methods then run on the patches, see `ClsGrid`)."""
    name = method or cfg.method
    entry = METHODS.get(name)
    own = name == cfg.method
    params = {**cfg.params, **extra} if own else {}
    backend = Backend(cfg.backend) if Backend(cfg.backend) in entry.impls else Backend.REFERENCE
    kv = cfg.kv_heads if own else None
    cls = cfg.pool == "cls"
    if grid is not None and (cfg.takes_grid if own else 2 in entry.spec.capabilities.dims and accepts_spatial(entry)):
        layer = build_layer(name, backend, d_model, cfg.n_heads, kv_heads=kv, params=params, spatial=grid)
        return ClsGrid(layer, d_model, cfg.n_heads) if cls else layer
    n = (grid[0] * grid[1] if grid else 0) + cls
    spatial = (n,) if own and cfg.count_spatial and n else None
    return build_layer(name, backend, d_model, cfg.n_heads, kv_heads=kv, params=params, spatial=spatial)


def _aux(blocks: nn.ModuleList) -> torch.Tensor | None:
    terms = [a for blk in blocks if (a := getattr(blk.attn, "aux_loss", None)) is not None]
    return torch.stack([torch.as_tensor(t).reshape(()) for t in terms]).sum() if terms else None


class ImageViT(nn.Module):
    """ViT on `images [B, H, W, C]` → logits, on the shared proxy skeleton (`ProxyModel`, so model
    plans and named hybrid layouts apply); see the module docstring.

    The CLS token enters the skeleton as an all-zero patch vector at position 0: its embedding is
    the patch embedding's bias plus the learned position 0, i.e. a learned CLS token."""

    def __init__(self, cfg: ImageModelConfig, gen: torch.Generator | None = None) -> None:
        super().__init__()
        self.cfg, d, cls = cfg, cfg.d_model, cfg.pool == "cls"
        n_tokens = cfg.grid[0] * cfg.grid[1] + cls
        dcal = {"sa", "glca"} <= set(cfg.branches)
        extra = {"branch": "sa"} if dcal else {}
        spatial = cfg.grid if cfg.takes_grid and not cls else (n_tokens,) if cfg.count_spatial else None
        mc = ModelConfig(method=cfg.method, out_dim=cfg.n_classes, backend=cfg.backend,
                         params={**cfg.params, **extra}, in_dim=cfg.patch ** 2 * cfg.chans, d_model=d,
                         n_layers=cfg.n_layers, n_heads=cfg.n_heads, kv_heads=cfg.kv_heads, causal=False, mlp=True,
                         pos="learned", max_len=n_tokens, spatial=spatial, layers=cfg.layers)
        make = None
        if cls and (cfg.takes_grid or cfg.layers):  # grid layers need ClsGrid: build the plan here
            plan = layer_plan(mc)
            make = lambda i: _attention(cfg, d, cfg.grid, plan[i], **extra)  # noqa: E731
        self.body = ProxyModel(mc, make_attn=make)
        self.head, self.body.head = self.body.head, nn.Identity()
        self.glca: Block | None = None
        if dcal:
            for blk in self.body.blocks:  # a model plan may mix in other methods: only DCAL layers roll out
                if hasattr(blk.attn, "keep_probs"):
                    blk.attn.keep_probs = True
            self.glca = Block(_attention(cfg, d, cfg.grid, branch="glca"), d, True, True)
            self.ln_g, self.head_g = nn.LayerNorm(d), nn.Linear(d, cfg.n_classes)
            self.loss_w = nn.Parameter(torch.zeros(3))  # uncertainty weights: SA, GLCA, PWCA
        self.pwca = dcal and "pwca" in cfg.branches
        self.gen = gen

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """Patch vectors `[B, T, p²·C]`, a zero vector first when pooled by CLS."""
        x = proxydata.patchify(images, self.cfg.patch)
        return torch.cat([x.new_zeros(len(x), 1, x.shape[-1]), x], 1) if self.cfg.pool == "cls" else x

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        return h[:, 0] if self.cfg.pool == "cls" else h.mean(1)

    def _stack(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Final hidden (before the last LN), every block's input, and the embeddings."""
        x = self.inputs(images)
        h = self.body.embed(x) + self.body.pos[: x.shape[1]]
        emb, inputs = h, []
        for blk in self.body.blocks:
            inputs.append(h)
            h = blk(h, emb)
        return h, inputs, emb

    def _glca_logits(self, h: torch.Tensor) -> torch.Tensor:
        assert self.glca is not None
        probs = (getattr(blk.attn, "probs", None) for blk in self.body.blocks)
        self.glca.attn.prior_probs = [p for p in probs if p is not None]
        try:
            return self.head_g(self.pool(self.ln_g(self.glca(h))))
        finally:
            self.glca.attn.prior_probs = None

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The pooled representation `[B, C]` (before the head)."""
        return self.pool(self.body(self.inputs(images)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.glca is None:
            return self.head(self.features(images))
        h, _, _ = self._stack(images)
        probs = (torch.softmax(self.head(self.pool(self.body.ln_f(h))).float(), -1)
                 + torch.softmax(self._glca_logits(h).float(), -1))
        return torch.log(probs / 2)  # evaluation: sum of the SA and GLCA class probabilities

    def train_loss(self, images: torch.Tensor, targets: torch.Tensor, loss: LossFn,
                   partner: torch.Tensor | None = None) -> torch.Tensor:
        """Training loss; DCAL: uncertainty-weighted SA + GLCA (+ PWCA with a partner from the batch:
        `partner[i]` is image i's, a random permutation by default); the terms land in `last_terms`."""
        if self.glca is None:
            return loss(self(images), targets)
        h, inputs, emb = self._stack(images)
        terms = [loss(self.head(self.pool(self.body.ln_f(h))), targets), loss(self._glca_logits(h), targets)]
        if self.pwca and len(images) > 1:
            perm = partner if partner is not None else torch.randperm(len(images), generator=self.gen).to(images.device)
            h1 = emb
            for blk, x2 in zip(self.body.blocks, inputs, strict=True):
                pwca = hasattr(blk.attn, "pair")
                if pwca:
                    blk.attn.pair = blk.ln1(x2[perm])  # the partner's SA-stream tokens at this layer
                try:
                    h1 = blk(h1, emb)
                finally:
                    if pwca:
                        blk.attn.pair = None
            terms.append(loss(self.head(self.pool(self.body.ln_f(h1))), targets))
        self.last_terms = torch.stack(terms).detach()
        w = self.loss_w[:len(terms)]
        return (0.5 * torch.exp(-w) * torch.stack(terms) + 0.5 * w).sum()

    def aux_loss(self) -> torch.Tensor | None:
        return self.body.aux_loss()


class SHViTBlock(nn.Module):
    """DWConv 3×3 residual → [LN → attention residual] → conv FFN (ratio 2) residual, on a grid."""

    def __init__(self, d: int, grid: tuple[int, int], attn: nn.Module | None) -> None:
        super().__init__()
        self.grid, self.attn = grid, attn
        self.dw = nn.Sequential(nn.Conv2d(d, d, 3, padding=1, groups=d), nn.BatchNorm2d(d))
        self.ln = nn.LayerNorm(d) if attn is not None else None
        self.ffn = nn.Sequential(nn.Conv2d(d, 2 * d, 1), nn.BatchNorm2d(2 * d), nn.ReLU(), nn.Conv2d(2 * d, d, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x [B, C, h, w]`."""
        x = x + self.dw(x)
        if self.attn is not None:
            t = x.flatten(2).transpose(1, 2)
            x = x + self.attn(self.ln(t)).transpose(1, 2).reshape(x.shape)
        return x + self.ffn(x)


class SHViTNet(nn.Module):
    """SHViT macro design with the method in every attention slot (stages 2…); see the module docstring."""

    def __init__(self, cfg: ImageModelConfig) -> None:
        super().__init__()
        d, convs = cfg.d_model, int(math.log2(cfg.patch))
        if 2 ** convs != cfg.patch or len(cfg.shvit_depths) < 2:
            raise ValueError(f"shvit backbone needs a power-of-two stem stride and ≥ 2 stages, got {cfg.patch}, "
                             f"{cfg.shvit_depths}")
        widths = [max(8, d // 2 ** (convs - 1 - i)) for i in range(convs)]
        stem: list[nn.Module] = []
        for i, w in enumerate(widths):
            stem += [nn.Conv2d(cfg.chans if i == 0 else widths[i - 1], w, 3, 2, 1), nn.BatchNorm2d(w)]
            stem += [nn.ReLU()] if i < convs - 1 else []
        self.stem = nn.Sequential(*stem, nn.Conv2d(widths[-1], d, 1)) if widths[-1] != d else nn.Sequential(*stem)
        self.grids = shvit_grids(cfg.grid, cfg.shvit_depths)
        stages: list[nn.Module] = []
        for i, (depth, grid) in enumerate(zip(cfg.shvit_depths, self.grids, strict=True)):
            if i:
                stages.append(nn.Sequential(nn.Conv2d(d, d, 3, 2, 1), nn.BatchNorm2d(d)))
            for _ in range(depth):
                stages.append(SHViTBlock(d, grid, None if i == 0 else _attention(cfg, d, grid)))
        self.stages = nn.Sequential(*stages)
        self.ln_f, self.head = nn.LayerNorm(d), nn.Linear(d, cfg.n_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(images.permute(0, 3, 1, 2)))
        return self.ln_f(x.mean((2, 3)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def train_loss(self, images: torch.Tensor, targets: torch.Tensor, loss: LossFn) -> torch.Tensor:
        return loss(self(images), targets)

    def aux_loss(self) -> torch.Tensor | None:
        return _aux(nn.ModuleList(m for m in self.stages if isinstance(m, SHViTBlock) and m.attn is not None))
