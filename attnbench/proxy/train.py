"""One small-model trainer shared by every accuracy proxy (MQAR, NIAH, ICL regression, images).

Model: token or vector embedding [+ learned positions] → N pre-LN blocks
`[LN → attention → residual]` (+ `[LN → MLP 4× GELU → residual]`) → LN → head. Only the attention
changes: any registered method/backend through `attnbench.layers.build_layer`, one per layer of
the model plan (`layer_plan`: `ModelConfig.layers`, else the method's `spec.layout`, else
`n_layers` copies), so hybrids (e.g. SpectFormer, Deconstructing-Attention hybrids) train as such. Budgets are in
steps; early stopping on an eval metric or an EMA loss; a wall-clock cap stops training and marks
the result `truncated` (never a silent pass). Same seed on the same machine → same numbers as long
as the cap is not hit, so the suites' caps are safety nets (smoke: 300 s, about 5× the nominal
step budget, since shared 2-core machines run 3–10× slower) and the step budget decides.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from attnbench.layers import accepts_rope, build_layer
from attnbench.registry import METHODS, MethodEntry
from attnbench.spec import Backend
from attnbench.suite import Row

POS_SCHEMES = ("learned", "rope", "none")


@dataclass(frozen=True)
class ModelConfig:
    """Skeleton of a proxy model; exactly one of `vocab` (token ids) / `in_dim` (vectors) is set."""

    method: str
    out_dim: int
    backend: str = "reference"
    params: Mapping[str, Any] = field(default_factory=dict)
    vocab: int | None = None
    in_dim: int | None = None
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 1
    kv_heads: int | None = None
    causal: bool = True
    mlp: bool = False
    norm: bool = True  # pre-LN in every block and before the head
    pos: str = "learned"  # learned | rope | none
    max_len: int = 512  # learned positions only
    spatial: tuple[int, ...] | None = None  # token grid handed to 2-D methods
    layers: tuple[str, ...] | None = None  # per-layer methods (sets n_layers); None: layout or copies

    def __post_init__(self) -> None:
        if self.layers is not None:
            if not self.layers:
                raise ValueError("layers: a model plan needs at least one layer")
            object.__setattr__(self, "layers", tuple(self.layers))
            object.__setattr__(self, "n_layers", len(self.layers))
        if self.pos not in POS_SCHEMES:
            raise ValueError(f"unknown positional scheme {self.pos!r}; valid: {', '.join(POS_SCHEMES)}")
        if (self.vocab is None) == (self.in_dim is None):
            raise ValueError("set exactly one of vocab (token input) and in_dim (vector input)")


def effective_pos(entry: MethodEntry, pos: str) -> tuple[str, str]:
    """The positional scheme the method `entry` trains with, and why it differs from `pos` (or "").

    RoPE goes into the q/k heads (`attnbench.rope.rotary`), so layer methods that own their
    projections and take no `rope` flag get no positions instead; methods of the `positional`
    family carry their own position signal and get none added.
    A hybrid (a spec with a `layout`) keeps RoPE when some layer of its plan takes it; the others
    run without. A positional-family layer that takes a `rope` flag (MDHA: a local conv, not a
    position code) asks for the model's positions and gets the same scheme as MHA.
    """
    layout = entry.spec.layout
    if layout is not None and pos == "rope":
        plan = layout(4, entry.spec.params())
        if any(accepts_rope(METHODS.get(m)) for m in plan):
            return pos, "" if all(accepts_rope(METHODS.get(m)) for m in plan) else \
                "hybrid: RoPE in the layers that take it, none in the others"
    if pos == "rope" and not accepts_rope(entry):
        return "none", "this layer method owns its q/k projections and takes no RoPE hook"
    if pos != "none" and entry.spec.family == "positional" and not _takes_rope_flag(entry):
        return "none", "positional-family methods carry their own position signal"
    return pos, ""


def _takes_rope_flag(entry: MethodEntry) -> bool:
    return entry.spec.kind == "layer" and "rope" in inspect.signature(entry.reference.fn).parameters


def layer_plan(cfg: ModelConfig) -> tuple[str, ...]:
    """Method name of every layer: `cfg.layers`, else the method's `spec.layout`, else copies."""
    if cfg.layers is not None:
        return cfg.layers
    spec = METHODS.get(cfg.method).spec
    if spec.layout is None:
        return (cfg.method,) * cfg.n_layers
    plan = tuple(spec.layout(cfg.n_layers, spec.params(cfg.params)))
    if len(plan) != cfg.n_layers:
        raise ValueError(f"{cfg.method}: layout gave {len(plan)} layers for n_layers={cfg.n_layers}")
    return plan


class Block(nn.Module):
    def __init__(self, attn: nn.Module, d_model: int, mlp: bool, norm: bool) -> None:
        super().__init__()
        self.attn = attn
        self.ln1 = nn.LayerNorm(d_model) if norm else nn.Identity()
        self.mlp = nn.Sequential(nn.LayerNorm(d_model) if norm else nn.Identity(),
                                 nn.Linear(d_model, 4 * d_model), nn.GELU(),
                                 nn.Linear(4 * d_model, d_model)) if mlp else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        """`emb`: the model's input embeddings, handed to layers with `wants_embeddings = True`
        (e.g. StaticEmbQK takes its Q/K from them)."""
        h = self.ln1(x)
        x = x + (self.attn(h, emb=emb) if getattr(self.attn, "wants_embeddings", False) else self.attn(h))
        return x + self.mlp(x) if self.mlp is not None else x


class ProxyModel(nn.Module):
    """The shared skeleton. `make_attn(layer_index)` overrides the registry (tests only).

    Layer i is built from `layer_plan(cfg)[i]`: the case's method with its params and backend;
    any other method of the plan (e.g. `mha` in a hybrid) with its defaults, the case's backend
    where it has it (else reference), RoPE where it takes it. A layer with `set_layer_index(i)`
    is told its depth (e.g. per-layer noise seeds)."""

    def __init__(self, cfg: ModelConfig, make_attn: Callable[[int], nn.Module] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.embed = nn.Embedding(cfg.vocab, d) if cfg.vocab is not None else nn.Linear(cfg.in_dim, d)
        self.pos = nn.Parameter(torch.randn(cfg.max_len, d) * 0.02) if cfg.pos == "learned" else None
        self.plan = layer_plan(cfg) if make_attn is None else (cfg.method,) * cfg.n_layers
        self.blocks = nn.ModuleList(
            Block(make_attn(i) if make_attn else self._attention(i), d, cfg.mlp, cfg.norm)
            for i in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(d) if cfg.norm else nn.Identity()
        self.head = nn.Linear(d, cfg.out_dim)

    def _attention(self, i: int) -> nn.Module:
        c, name = self.cfg, self.plan[i]
        if name == c.method:
            rope = c.pos == "rope" and (len(set(self.plan)) == 1 or accepts_rope(METHODS.get(name)))
            layer = build_layer(name, c.backend, c.d_model, c.n_heads, kv_heads=c.kv_heads, causal=c.causal,
                                params=c.params, spatial=c.spatial, rope=rope)
        else:
            entry = METHODS.get(name)
            backend = Backend(c.backend) if Backend(c.backend) in entry.impls else Backend.REFERENCE
            takes_grid = "spatial" in inspect.signature(entry.reference.fn).parameters
            layer = build_layer(name, backend, c.d_model, c.n_heads, causal=c.causal,
                                spatial=c.spatial if takes_grid else None,
                                rope=c.pos == "rope" and accepts_rope(entry))
        if hasattr(layer, "set_layer_index"):
            layer.set_layer_index(i)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x`: token ids `[B, N]` or vectors `[B, N, in_dim]` → `[B, N, out_dim]`."""
        h = self.embed(x)
        if self.pos is not None:
            if h.shape[1] > self.pos.shape[0]:
                raise ValueError(f"sequence of {h.shape[1]} exceeds learned positions ({self.pos.shape[0]})")
            h = h + self.pos[: h.shape[1]]
        emb = h
        for blk in self.blocks:
            h = blk(h, emb)
        return self.head(self.ln_f(h))

    def aux_loss(self) -> torch.Tensor | None:
        """Sum of the `aux_loss` the attention modules exposed in the last forward (or None)."""
        terms = [a for blk in self.blocks if (a := getattr(blk.attn, "aux_loss", None)) is not None]
        return torch.stack([torch.as_tensor(t).reshape(()) for t in terms]).sum() if terms else None


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation budget. LR: linear warm-up, then cosine to 0 at `schedule_steps` (None = hold)."""

    steps: int
    lr: float
    weight_decay: float = 0.0
    optimizer: str = "adamw"  # adamw | adam
    warmup: int = 0
    schedule_steps: int | None = None
    grad_clip: float | None = 1.0
    eval_every: int = 0  # 0 = only at the end
    target: float | None = None  # stop once eval metric >= target
    loss_target: float | None = None  # stop once the EMA (0.95) training loss < loss_target
    wall_cap_s: float | None = None  # stop and mark truncated past this many seconds

    def lr_at(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if not self.schedule_steps:
            return self.lr
        t = min(1.0, (step - self.warmup) / max(1, self.schedule_steps - self.warmup))
        return self.lr * 0.5 * (1 + math.cos(math.pi * t))


@dataclass
class TrainResult:
    steps: int
    wall_s: float
    truncated: bool
    stopped_early: bool
    final_loss: float
    evals: list[tuple[int, float]] = field(default_factory=list)

    def rows(self) -> list[Row]:
        """The rows every proxy emits: steps, wall_s, truncated, final training loss."""
        return [Row("steps", self.steps, "steps"), Row("wall_s", self.wall_s, "s"),
                Row("truncated", float(self.truncated), "bool"),
                Row("train_loss", self.final_loss, "nats")]


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)


def data_rng(seed: int, stream: int) -> np.random.Generator:
    """Independent numpy streams per purpose (0 = train, 1 = test, ...) for one seed."""
    return np.random.default_rng([seed, stream])


def train(model: ProxyModel, batch_fn: Callable[[int], Any],
          loss_fn: Callable[[ProxyModel, Any], torch.Tensor], cfg: TrainConfig,
          eval_fn: Callable[[ProxyModel], float] | None = None) -> TrainResult:
    """Train `model` in place.

    Args:
        batch_fn: step → batch (any structure `loss_fn` takes), generated from a seeded stream.
        loss_fn: (model, batch) → scalar loss; the model's aux losses are added here.
        eval_fn: model → metric (higher is better), run every `eval_every` steps and at the end.
    Returns:
        Steps taken, wall seconds, truncated flag, early-stop flag, EMA loss, eval history.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt_cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[cfg.optimizer]
    opt = opt_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    t0 = time.perf_counter()
    ema, step, truncated, stopped = None, 0, False, False
    evals: list[tuple[int, float]] = []

    def evaluate() -> float | None:
        if eval_fn is None:
            return None
        model.eval()
        with torch.no_grad():
            value = float(eval_fn(model))
        model.train()
        evals.append((step, value))
        return value

    model.train()
    while step < cfg.steps:
        for g in opt.param_groups:
            g["lr"] = cfg.lr_at(step)
        loss = loss_fn(model, batch_fn(step))
        aux = model.aux_loss()
        total = loss + aux if aux is not None else loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        step += 1
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise FloatingPointError(f"training loss became {lv} at step {step}")
        ema = lv if ema is None else 0.95 * ema + 0.05 * lv
        if cfg.loss_target is not None and step >= 20 and ema < cfg.loss_target:
            stopped = True
            break
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
            value = evaluate()
            if cfg.target is not None and value is not None and value >= cfg.target:
                stopped = True
                break
        if cfg.wall_cap_s is not None and time.perf_counter() - t0 > cfg.wall_cap_s:
            truncated = True
            break
    if not (evals and evals[-1][0] == step):
        evaluate()
    model.eval()
    return TrainResult(step, time.perf_counter() - t0, truncated, stopped, float(ema or 0.0), evals)


def token_loss(model: ProxyModel, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy over scored positions (labels != -100)."""
    x, y = batch
    logits = model(x)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1),
                                       ignore_index=-100)


def predict(model: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    """`model(x)` in chunks of exactly `batch` rows (the workload's batch, which the method's
    checks saw): the last chunk is padded with copies of its final row and trimmed after."""
    outs = []
    with torch.no_grad():
        for s in range(0, len(x), batch):
            xb = x[s:s + batch]
            n = len(xb)
            if n < batch:
                xb = torch.cat([xb, xb[-1:].expand(batch - n, *xb.shape[1:])])
            outs.append(model(xb)[:n])
    return torch.cat(outs)


def token_hits(model: ProxyModel, x: torch.Tensor, y: torch.Tensor, batch: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Per example: number of scored positions whose argmax is right, and number scored."""
    pred = predict(model, x, batch).argmax(-1)
    mask = y != -100
    return ((pred == y) & mask).sum(1).cpu().numpy(), mask.sum(1).cpu().numpy()


