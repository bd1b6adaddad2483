"""Shapes scenes: small synthetic scenes of shapes on a grid, where the answer is set by object geometry.

A scene is a `grid × grid` board (one token per cell: empty, the probe, or one of `n_shapes` shapes)
holding the probe and `n_objects` other shapes at distinct cells. The model reads the board and
answers at the probe's cell:
- `nearest`: the shape of the object closest to the probe (Euclidean distance between cell centres;
  scenes with a tie for closest are redrawn);
- `farthest`: the shape of the object farthest from it (same tie rule).
Nothing but the distances between objects decides the answer, so an attention that is told those
distances (`oat`'s object-distance bias) has the task's structure built in, while `mha` must learn
it from learned absolute positions. Methods that take a 2-D grid get the board's grid; others see
the row-major sequence. Positional-family methods get no added positions (the case's `pos_note`).

Rows: scene_acc (fresh test scenes), scene_acc_near (test scenes whose answer object is within
`near` cells of the probe), params, steps, wall_s, truncated, train_loss.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np
import torch

from attnbench.metrics import higher, info
from attnbench.proxy.suite import ProxySettings, ProxySuite, accepts_spatial, model_config, options
from attnbench.proxy.train import ProxyModel, TrainConfig, data_rng, effective_pos, predict, seed_all, train
from attnbench.registry import MethodEntry, register_suite
from attnbench.settings import Positive, Seconds, settings
from attnbench.spec import Workload
from attnbench.suite import ResolvedCase, Row

EMPTY, PROBE = 0, 1  # token ids; shape s is token 2 + s


@settings
class ShapesSettings(ProxySettings):
    """`[suite.shapes_scene]`: the board, the questions (`tasks`, one case each) and the budget."""

    tasks: tuple[Literal["nearest", "farthest"], ...] = ("nearest",)
    grid: Positive = 8
    n_objects: Positive = 6
    n_shapes: Positive = 4
    near: float = 2.0
    n_test: Positive = 1000
    steps: Positive = 1500
    batch_size: Positive = 64
    d_model: Positive = 64
    n_layers: Positive = 2
    n_heads: Positive = 4
    pos: Literal["learned", "none"] = "learned"
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 100
    wall_cap_s: Seconds = 300.0


SMOKE = ShapesSettings()
TIERS: dict[str, ShapesSettings] = {
    "smoke": SMOKE,
    "quick": dataclasses.replace(SMOKE, tasks=("nearest", "farthest"), steps=3000, n_test=2000, wall_cap_s=900.0),
    "full": dataclasses.replace(SMOKE, tasks=("nearest", "farthest"), grid=16, n_objects=12, n_shapes=8,
                                steps=20_000, n_test=5000, d_model=128, n_layers=4, wall_cap_s=7200.0),
}
OPTION_KEYS = ("grid", "n_objects", "n_shapes", "near", "n_test", "steps", "batch_size", "n_layers", "lr",
               "weight_decay", "warmup", "wall_cap_s")


@dataclasses.dataclass(frozen=True)
class Scenes:
    """`tokens [n, G·G]`, `probe [n]` (cell index), `label [n]` (shape), `dist [n]` (answer's distance)."""

    tokens: np.ndarray
    probe: np.ndarray
    label: np.ndarray
    dist: np.ndarray


def scenes(rng: np.random.Generator, n: int, grid: int, n_objects: int, n_shapes: int, task: str) -> Scenes:
    """`n` boards with a probe and `n_objects` shapes; the label is the nearest (farthest) shape."""
    cells = grid * grid
    if n_objects + 1 > cells or n_objects < 1:
        raise ValueError(f"{n_objects} objects and a probe do not fit a {grid}×{grid} board")
    yx = np.stack(np.divmod(np.arange(cells), grid), -1).astype(np.float64)
    tokens = np.full((n, cells), EMPTY, dtype=np.int64)
    probe, label, dist = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n)
    i = 0
    while i < n:
        where = rng.choice(cells, n_objects + 1, replace=False)
        shapes = rng.integers(0, n_shapes, n_objects)
        d = np.sqrt(((yx[where[1:]] - yx[where[0]]) ** 2).sum(-1))
        order = np.argsort(d if task == "nearest" else -d, kind="stable")
        if n_objects > 1 and np.isclose(d[order[0]], d[order[1]]):
            continue  # ambiguous answer: redraw
        tokens[i, where[0]] = PROBE
        tokens[i, where[1:]] = 2 + shapes
        probe[i], label[i], dist[i] = where[0], shapes[order[0]], d[order[0]]
        i += 1
    return Scenes(tokens, probe, label, dist)


def targets(s: Scenes) -> np.ndarray:
    """Per-token labels `[n, G·G]`: the answer at the probe's cell, -100 (unscored) elsewhere."""
    y = np.full(s.tokens.shape, -100, dtype=np.int64)
    y[np.arange(len(y)), s.probe] = s.label
    return y


@register_suite
class ShapesScene(ProxySuite):
    name = "shapes_scene"
    version = 1
    metrics = (
        higher("scene_acc", label="scene accuracy", headline=True),
        higher("scene_acc_near", label="accuracy, answer near the probe"),
        info("params", "count", label="parameters"),
    )
    causal = False
    takes_grid = True
    Settings = ShapesSettings
    tiers = TIERS

    def tasks(self, s: ShapesSettings, entry: MethodEntry, device: str) -> list[tuple[Workload, dict[str, Any]]]:
        grid = (s.grid, s.grid)
        spatial = grid if 2 in entry.spec.capabilities.dims and accepts_spatial(entry) else None
        n = s.grid * s.grid
        pos, why = effective_pos(entry, s.pos)
        w = Workload(batch=s.batch_size, heads_q=s.n_heads, heads_kv=s.n_heads, seq_q=n, seq_kv=n,
                     head_dim=s.d_model // s.n_heads, causal=False, mode="fwd_bwd", device=device, spatial=spatial)
        return [(w, {**options(s, OPTION_KEYS), "task": t, "pos": pos, "pos_note": why}) for t in s.tasks]

    def run(self, rc: ResolvedCase) -> list[Row]:
        o, w, seed = rc.options, rc.case.workload, rc.seed
        dev = torch.device(w.device)
        shape = (o["grid"], o["n_objects"], o["n_shapes"], o["task"])
        train_rng = data_rng(seed, 0)
        test = scenes(data_rng(seed, 1), o["n_test"], *shape)

        def batch_fn(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            b = scenes(train_rng, o["batch_size"], *shape)
            return torch.from_numpy(b.tokens).to(dev), torch.from_numpy(targets(b)).to(dev)

        def loss_fn(m: ProxyModel, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            x, y = batch
            logits = m(x)
            return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1),
                                                     ignore_index=-100)

        seed_all(seed)
        cfg = model_config(rc, vocab=2 + o["n_shapes"], out_dim=o["n_shapes"], n_layers=o["n_layers"], mlp=True,
                           pos=o["pos"], max_len=w.seq_q)
        model = ProxyModel(cfg).to(dev)
        tc = TrainConfig(steps=o["steps"], lr=o["lr"], weight_decay=o["weight_decay"], warmup=o["warmup"],
                         schedule_steps=o["steps"], wall_cap_s=o["wall_cap_s"])
        res = train(model, batch_fn, loss_fn, tc)  # type: ignore[arg-type]
        logits = predict(model, torch.from_numpy(test.tokens).to(dev), w.batch)
        pred = logits[torch.arange(len(test.probe)), torch.from_numpy(test.probe).to(dev)].argmax(-1).cpu().numpy()
        hit = pred == test.label
        near = test.dist <= o["near"]
        rows = [Row("scene_acc", float(hit.mean()), "fraction", n=len(hit)),
                Row("params", float(sum(p.numel() for p in model.parameters())), "count")]
        if near.any():
            rows.append(Row("scene_acc_near", float(hit[near].mean()), "fraction", n=int(near.sum())))
        return rows + res.rows()
