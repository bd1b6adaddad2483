"""Per-layer × per-head analysis of models whose attention comes from the registry (cards B10–B14).

Scores, each an `[L, H]` tensor over the model's generic attention layers (`AttentionLayer`, in
module order):
    head_importance_{loss,acc,conf}   pruning-based: the drop when the head's output is zeroed (gate ξ = 0)
    head_importance_taylor            first-order `|Σ ∂L/∂ξ|` (one backward)
    vhd                               vision-aware head divergence at the last position: `analyze` runs the
                                      paper's second forward without the image (`apply.true_vhd`);
                                      `vhd_scores` is the per-layer stand-in (image keys masked)
    sink_mass                         mean attention to token 0 (attention-sink detection)
    attn_entropy                      mean row entropy (nats)
    attn_distance                     mean grid distance E[r] among image (patch) tokens, in patches
HeadHunter (`head_hunter`) greedily selects heads whose SoftPAG perturbation maximises an objective.

Rows (`analyze`): dicts `{"suite": "analysis", "method", "metric", "value", "unit", "params"}` where
`params` is JSON `{"layer": l, "head": h}`; `heatmap_svg(rows, metric)` draws one metric as a
layer × head heatmap with a per-layer mean line.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnbench import intervene as iv
from attnbench.layers import AttentionLayer

TargetFn = Callable[[Any], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # output → (loss, acc, conf)


def attention_layers(model: nn.Module) -> list[AttentionLayer]:
    layers = [m for m in model.modules() if isinstance(m, AttentionLayer)]
    if not layers:
        raise ValueError("the model has no generic AttentionLayer (layer methods own their attention)")
    return layers


@dataclass
class Captured:
    """q, k, v `[B, H, N, D]` of one attention layer in one forward."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    layer: AttentionLayer

    def probs(self, keep: torch.Tensor | None = None, rows: slice | None = None) -> torch.Tensor:
        """Probabilities `[B, H, Nq, Nk]` as the layer's method defines them (mask/score mods rebuilt)."""
        params = {"base": self.layer.entry.name,
                  "base_params": {k: v for k, v in self.layer.params.items() if k != "spatial"}}
        start = rows.indices(self.q.shape[2])[0] if rows else 0
        q = self.q[:, :, rows] if rows else self.q
        k = self.k.repeat_interleave(self.q.shape[1] // self.k.shape[1], 1)
        return iv.probs(q.float(), k.float(), self.layer.causal, params, keep, q_offset=start)


def capture(model: nn.Module, *inputs: Any) -> tuple[Any, list[Captured]]:
    """Run `model(*inputs)` without grad and capture every attention layer's q, k, v."""
    out: list[Captured] = []
    handles = []
    for layer in attention_layers(model):
        store: dict[str, torch.Tensor] = {}

        def grab(name: str, store: dict[str, torch.Tensor] = store) -> Callable[..., None]:
            def hook(mod: nn.Module, inp: Any, o: torch.Tensor) -> None:
                store[name] = o.detach()
            return hook

        handles += [layer.q.register_forward_hook(grab("q")), layer.kv.register_forward_hook(grab("kv"))]
        out.append(Captured(torch.empty(0), torch.empty(0), torch.empty(0), layer))
        out[-1].store = store  # type: ignore[attr-defined]
    try:
        with torch.no_grad():
            result = model(*inputs)
    finally:
        for h in handles:
            h.remove()
    for c in out:
        s, lay = c.store, c.layer  # type: ignore[attr-defined]
        b, n, _ = s["q"].shape
        c.q = s["q"].view(b, n, lay.n_heads, lay.head_dim).transpose(1, 2)
        c.k, c.v = s["kv"].view(b, n, 2, lay.kv_heads, lay.head_dim).permute(2, 0, 3, 1, 4)
    return result, out


# -- map statistics --------------------------------------------------------------------------------
def entropy(p: torch.Tensor) -> torch.Tensor:
    """Mean row entropy per head `[H]` of `P [B, H, N, N]`."""
    return -(p * p.clamp_min(1e-30).log()).sum(-1).mean((0, 2))


def sink_mass(p: torch.Tensor, token: int = 0) -> torch.Tensor:
    """Mean attention to `token` per head `[H]` (rows that can see it)."""
    return p[..., token].mean((0, 2))


def distance_profile(p: torch.Tensor, grid: tuple[int, int], offset: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention-distance profile among the grid tokens `offset … offset+h·w` of `P [B, H, N, N]`.

    Returns `prof [H, R]` (mean `P[i, j]` over pairs at rounded distance r) and `E[r] [H]`
    (`Σ_r r·mass_r` with mass_r the mean attention per query at distance r: identity ⇒ 0).
    """
    h, w = grid
    n = h * w
    sub = p[:, :, offset:offset + n, offset:offset + n].double()
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], -1).double()
    r = torch.cdist(pos, pos).round().long()  # [n, n]
    n_r = int(r.max()) + 1
    onehot = nn.functional.one_hot(r, n_r).double()  # [n, n, R]
    mass = torch.einsum("bhij,ijr->hr", sub, onehot) / (sub.shape[0] * n)  # per query, mean over batch
    prof = mass / onehot.sum((0, 1)) * n  # mean P per pair at distance r
    return prof, (mass * torch.arange(n_r, dtype=torch.float64)).sum(-1) / mass.sum(-1).clamp_min(1e-30)


def vhd_scores(caps: Sequence[Captured], img: torch.Tensor) -> torch.Tensor:
    """VHD `[L, H]`: L2 between the last position's head outputs with and without image keys (batch mean)."""
    from attnbench.impls.vhr import vhd

    out = []
    for c in caps:
        n = c.q.shape[2]
        last = slice(n - 1, n)
        v = c.v.repeat_interleave(c.q.shape[1] // c.v.shape[1], 1).float()
        o_img = (c.probs(rows=last) @ v)[:, :, 0]
        o_no = (c.probs(keep=~img, rows=last) @ v)[:, :, 0]
        out.append(vhd(o_img, o_no).mean(0))
    return torch.stack(out).float()


def sink_tokens(hidden: torch.Tensor, dims: Sequence[int] | None, tau: float = 20.0) -> torch.Tensor:
    """VAR's sink tokens `[B, N]`: `max_{d∈dims} |x_d| / RMS(x) ≥ τ` on layer inputs `[B, N, C]` (`impls/var`)."""
    from attnbench.impls.var import detect_sinks

    return detect_sinks(hidden, tau, None if dims is None else list(dims))


def massive_dims(hidden: torch.Tensor, top: int = 2) -> list[int]:
    """Candidate sink dimensions: the `top` channels with the largest |activation| relative to RMS."""
    from attnbench.impls.var import massive_dims as md

    return md(hidden, top)


# -- pruning-based importance ------------------------------------------------------------------------
class HeadGates:
    """Multiplicative gates ξ `[L, H]` on each layer's head outputs (before the output projection)."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = attention_layers(model)
        self.xi = torch.ones(len(self.layers), max(lay.n_heads for lay in self.layers))
        self.handles = []
        for i, lay in enumerate(self.layers):
            def pre(mod: nn.Module, args: tuple[torch.Tensor], i: int = i, lay: AttentionLayer = lay):
                x = args[0]
                g = self.xi[i, :lay.n_heads].to(x.dtype).repeat_interleave(lay.head_dim)
                return (x * g,)
            self.handles.append(lay.out.register_forward_pre_hook(pre))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def head_importance(model: nn.Module, inputs: Sequence[Any], target: TargetFn) -> dict[str, torch.Tensor]:
    """Pruning-based head importance `[L, H]` (larger = more important; card B10).

    Args:
        inputs: positional inputs of `model`.
        target: model output → (loss, accuracy, true-class confidence) scalars.
    Returns:
        `loss` (ΔLoss), `acc` (ΔAcc), `conf` (ΔConf) when the head is zeroed, and `taylor` `|∂L/∂ξ|`.
    """
    gates = HeadGates(model)
    try:
        with torch.no_grad():
            l0, a0, c0 = (float(t) for t in target(model(*inputs)))
        shape = gates.xi.shape
        out = {k: torch.zeros(shape) for k in ("loss", "acc", "conf")}
        for li, lay in enumerate(gates.layers):
            for h in range(lay.n_heads):
                gates.xi[li, h] = 0.0
                with torch.no_grad():
                    loss, acc, conf = (float(t) for t in target(model(*inputs)))
                gates.xi[li, h] = 1.0
                out["loss"][li, h], out["acc"][li, h], out["conf"][li, h] = loss - l0, a0 - acc, c0 - conf
        gates.xi.requires_grad_(True)
        loss = target(model(*inputs))[0]
        (grad,) = torch.autograd.grad(loss, gates.xi)
        out["taylor"] = grad.abs().detach()
        gates.xi.requires_grad_(False)
    finally:
        gates.remove()
    return out


# -- HeadHunter -------------------------------------------------------------------------------------
def head_hunter(model: nn.Module, objective: Callable[[nn.Module], float], *, rounds: int = 1, k: int = 1,
                method: str = "softpag", params: Mapping[str, Any] | None = None
                ) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """Greedy head search (HeadHunter): each round, try adding every remaining (layer, head) to the set,
    perturb the set with `method` (SoftPAG at `strength` 1 by default) and keep the `k` best by
    `objective` (higher = better). Returns the selection order and the first-round score `[L, H]`."""
    layers = attention_layers(model)
    params = {"strength": 1.0, **(params or {})}
    chosen: list[tuple[int, int]] = []
    first = torch.full((len(layers), max(lay.n_heads for lay in layers)), float("nan"))

    def score(heads: list[tuple[int, int]]) -> float:
        per = {li: {"heads": sorted(h for lj, h in heads if lj == li)} for li in {lj for lj, _ in heads}}
        with torch.no_grad():
            return float(objective(iv.apply_intervention(model, method, params, layers=per)))

    for r in range(rounds):
        cands = [(li, h) for li, lay in enumerate(layers) for h in range(lay.n_heads) if (li, h) not in chosen]
        if not cands:
            break
        scored = [(score([*chosen, c]), c) for c in cands]
        if r == 0:
            for s, (li, h) in scored:
                first[li, h] = s
        chosen += [c for _, c in sorted(scored, key=lambda t: -t[0])[:k]]
    return chosen, first


# -- rows and drawing -------------------------------------------------------------------------------
UNITS = {"head_importance_loss": "nats", "head_importance_acc": "fraction", "head_importance_conf": "prob",
         "head_importance_taylor": "grad", "vhd": "l2", "sink_mass": "prob", "attn_entropy": "nats",
         "attn_distance": "patches", "headhunter_score": "objective", "headhunter_rank": "rank",
         "cls_mass": "prob", "self_mass": "prob", "pattern_cluster": "cluster", "vit_top1": "fraction"}


def to_rows(scores: Mapping[str, torch.Tensor], method: str = "") -> list[dict[str, Any]]:
    """`[L, H]` score tensors → long rows with `params = {"layer", "head"}` (NaN cells dropped)."""
    rows = []
    for metric, t in scores.items():
        for li in range(t.shape[0]):
            for h in range(t.shape[1]):
                v = float(t[li, h])
                if math.isfinite(v):
                    rows.append({"suite": "analysis", "method": method, "metric": metric, "value": v,
                                 "unit": UNITS.get(metric, ""), "params": json.dumps({"head": h, "layer": li})})
    return rows


def rows_grid(rows: Sequence[Mapping[str, Any]], metric: str) -> torch.Tensor:
    """The `[L, H]` grid of one metric from rows (NaN where absent)."""
    cells = [(json.loads(r["params"]), r["value"]) for r in rows if r["metric"] == metric]
    if not cells:
        raise ValueError(f"no rows for metric {metric!r}")
    n_l = max(c["layer"] for c, _ in cells) + 1
    n_h = max(c["head"] for c, _ in cells) + 1
    grid = torch.full((n_l, n_h), float("nan"))
    for c, v in cells:
        grid[c["layer"], c["head"]] = v
    return grid


def heatmap_svg(rows: Sequence[Mapping[str, Any]], metric: str, title: str | None = None) -> str:
    """Layer × head heatmap of `metric` (diverging colours when signed) plus the per-layer mean, as SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = rows_grid(rows, metric).numpy()
    signed = (grid[~torch.isnan(torch.from_numpy(grid)).numpy()] < 0).any()
    n_l, n_h = grid.shape
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(2.5 + 0.45 * n_h + 1.6, 1.2 + 0.4 * n_l),
                                  gridspec_kw={"width_ratios": [max(n_h, 2), 2]})
    if signed:
        lim = float(abs(grid[grid == grid]).max()) or 1.0
        im = ax.imshow(grid, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    else:
        im = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(n_h))
    ax.set_yticks(range(n_l))
    ax.set_title(title or metric, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.08)
    means = [float(row[row == row].mean()) if (row == row).any() else float("nan") for row in grid]
    ax2.plot(means, range(n_l), marker="o")
    ax2.invert_yaxis()
    ax2.set_yticks(range(n_l))
    ax2.set_title("layer mean", fontsize=9)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    return buf.getvalue()


# -- `attnbench analyze` ---------------------------------------------------------------------------
def analyze(model_or_path: nn.Module | str | Path | None = None, *, method: str = "mha", preset: str = "smoke",
            seed: int = 0, steps: int | None = None, hunt: bool = True, n_probe: int = 128
            ) -> list[dict[str, Any]]:
    """Head scores of a Shapes-VLM hallucination proxy model as rows.

    Args:
        model_or_path: a trained `ShapesVLM` (or a `torch.save`d one); None trains one with `method`
            at the preset's hallucination settings (`steps` overrides the step budget).
        hunt: also run HeadHunter (SoftPAG, 1 round) for POPE-adversarial accuracy on the probe.
        n_probe: probe images (each gives 2 yes + 2 no adversarial POPE questions).
    """
    from attnbench.presets import load_preset
    from attnbench.proxy.suite import options
    from attnbench.proxy.train import data_rng
    from attnbench.registry import SUITES, load_plugins
    from attnbench.suites import hallucination as hs
    from attnbench.suites.hallucination import scoring as hal
    from attnbench.suites.hallucination.apply import true_vhd

    load_plugins()
    suite = SUITES.get("hallucination")
    s = suite.settings(load_preset(preset))
    o = options(dataclasses.replace(s, steps=steps) if steps else s)  # the options a suite case trains with
    if model_or_path is None:
        model, _ = hs.train_model(method, "reference", {}, o, seed)
    elif isinstance(model_or_path, nn.Module):
        model = model_or_path
    else:
        model = torch.load(model_or_path, weights_only=False)
    model.eval()
    cfg, voc = hs.scene_config(o), hs.Vocab(o["n_classes"])
    img_arr, objs = hal.scenes(data_rng(seed, 4), cfg, n_probe, min_objects=2)
    qs = hal.pope_questions(data_rng(seed, 5), objs, voc.n, "adversarial", partner=cfg.partner)
    patches = hs.patchify(img_arr, o["patch"])[torch.tensor([q[0] for q in qs])]
    text = torch.tensor([[voc.bos, voc.q, q[1]] for q in qs])
    want = torch.tensor([voc.yes if q[2] == "yes" else voc.no for q in qs])

    def target(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        last = logits[:, -1].float()
        loss = nn.functional.cross_entropy(last, want)
        yn = last[:, [voc.yes, voc.no]].softmax(-1)
        truth = (want == voc.no).long()
        acc = (yn.argmax(-1) == truth).float().mean()
        return loss, acc, yn.gather(1, truth[:, None]).mean()

    g = o["image"] // o["patch"]
    _, caps = capture(model, patches, text)
    maps = [c.probs() for c in caps]
    scores = {f"head_importance_{k}": v for k, v in head_importance(model, (patches, text), target).items()}
    scores["vhd"] = true_vhd(model, patches, text).mean(0).float()  # second forward without the image
    scores["sink_mass"] = torch.stack([sink_mass(p) for p in maps]).float()
    scores["attn_entropy"] = torch.stack([entropy(p) for p in maps]).float()
    scores["attn_distance"] = torch.stack([distance_profile(p, (g, g))[1] for p in maps]).float()
    if hunt:
        order, first = head_hunter(model, lambda m: float(target(m(patches, text))[1]), rounds=1, k=1)
        scores["headhunter_score"] = first
        rank = torch.full_like(first, float("nan"))
        for i, (li, h) in enumerate(order):
            rank[li, h] = i + 1
        scores["headhunter_rank"] = rank
    return to_rows(scores, method)
