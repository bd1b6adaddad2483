"""Object hallucination on the synthetic Shapes-VLM proxy (POPE- and CHAIR-style), proxies card §5(b).

A decoder-only "LVLM": image patches (linear embedding) as a prefix, then text tokens {classes, BOS,
EOS, Q, yes, no, PAD}; causal pre-LN blocks with MLP where only the attention changes. Batches mix
captions `BOS objs(sorted) EOS` and questions `Q obj → yes|no` (balanced labels, negatives uniform
over absent classes) 50/50; a caption and a question never share a sequence.

Methods whose spec `wraps_base` (the `intervention` family) are applied at inference on the
trained base (trained once per process and cached): the rows are the intervention's numbers and
`delta_*` against the unmodified base. Every other method is trained and evaluated as itself.

Rows: `pope_{random,popular,adversarial}_{acc,precision,recall,f1,yes_ratio}`, `chair_i`,
`chair_s`, `chair_recall`, `chair_mentions`; base methods also `pope_random_acc_blind` (image
tokens zeroed: the prior-only control); interventions `delta_pope_<split>_{f1,yes_ratio}`,
`delta_chair_{i,s}`; steps, wall_s (training), truncated, train_loss.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from attnbench import intervene as iv
from attnbench.layers import build_layer
from attnbench.metrics import POINT, higher, info, lower
from attnbench.proxy.suite import ProxySettings, ProxySuite, options
from attnbench.proxy.train import Block, TrainConfig, TrainResult, data_rng, seed_all, train
from attnbench.registry import MethodEntry, register_suite
from attnbench.settings import settings
from attnbench.spec import Backend, Workload
from attnbench.suite import ResolvedCase, Row
from attnbench.suites.hallucination import scoring as hal
from attnbench.suites.hallucination.analysis import UNITS as ANALYSIS_UNITS


@settings
class HallucinationSettings(ProxySettings):
    """`[suite.hallucination]`: Shapes scenes, the Shapes-VLM and its budget, eval sizes;
    `intervention_params.<method>` overrides an intervention's params at inference."""

    image: int = 32
    grid: int = 2
    max_objects: int = 4
    n_classes: int = 10
    prior: float = 0.8
    n_pairs: int = 5
    pair_prob: float = 0.7
    patch: int = 8
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    lr: float = 3e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    steps: int = 1_200
    warmup: int = 50
    n_pool: int = 8_192
    pope_images: int = 250
    chair_images: int = 500
    max_caption: int = 5
    wall_cap_s: float = 60.0
    intervention_params: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


SMOKE = HallucinationSettings()
TIERS: dict[str, HallucinationSettings] = {
    "smoke": SMOKE,
    "quick": dataclasses.replace(SMOKE, steps=1_500, wall_cap_s=300.0),
    # GPU: 64×64 scenes, 4×4 cells of 16 px, ≤ 8 objects, 30 classes (10 shapes × 3 size bands), 3 seeds
    "full": dataclasses.replace(SMOKE, seeds=(0, 1, 2), image=64, grid=4, max_objects=8, n_classes=30, n_pairs=15,
                                d_model=192, n_layers=4, n_heads=4, lr=1e-3, batch_size=128, steps=20_000,
                                warmup=500, n_pool=65_536, pope_images=1_000, chair_images=1_000, max_caption=9,
                                wall_cap_s=7_200.0),
}
SPLITS = ("random", "popular", "adversarial")
_CACHE: dict[str, tuple[nn.Module, TrainResult]] = {}


class Vocab:
    """Text ids after the classes: BOS, EOS, Q, YES, NO, PAD."""

    def __init__(self, n_classes: int) -> None:
        self.n = n_classes
        self.bos, self.eos, self.q, self.yes, self.no, self.pad = range(n_classes, n_classes + 6)
        self.size = n_classes + 6


class ShapesVLM(nn.Module):
    """Patch embedding + token embedding + learned positions → causal blocks → LN → text head."""

    def __init__(self, method: str, backend: str, params: dict[str, Any], vocab: Vocab, patch_dim: int,
                 n_patches: int, text_len: int, d_model: int, n_layers: int, n_heads: int,
                 kv_heads: int | None = None) -> None:
        super().__init__()
        self.n_patches = n_patches
        self.patch = nn.Linear(patch_dim, d_model)
        self.tok = nn.Embedding(vocab.size, d_model)
        self.pos = nn.Parameter(torch.randn(n_patches + text_len, d_model) * 0.02)
        self.blocks = nn.ModuleList(
            Block(build_layer(method, backend, d_model, n_heads, kv_heads=kv_heads, causal=True, params=params),
                  d_model, True, True)
            for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab.size)

    def forward(self, patches: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """`patches [B, P, patch_dim]`, `text [B, T]` → logits `[B, T, vocab]` at the text positions."""
        h = torch.cat([self.patch(patches), self.tok(text)], dim=1)
        h = h + self.pos[: h.shape[1]]
        for blk in self.blocks:
            h = blk(h)
        return self.head(self.ln_f(h[:, self.n_patches:]))

    def aux_loss(self) -> torch.Tensor | None:
        terms = [a for blk in self.blocks if (a := getattr(blk.attn, "aux_loss", None)) is not None]
        return torch.stack([torch.as_tensor(t).reshape(()) for t in terms]).sum() if terms else None


def patchify(img: np.ndarray, patch: int) -> torch.Tensor:
    """`[B, S, S, 3]` → `[B, (S/p)², p·p·3]` (row-major patches)."""
    b, s, _, c = img.shape
    g = s // patch
    x = img.reshape(b, g, patch, g, patch, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, -1)
    return torch.from_numpy(np.ascontiguousarray(x))


def scene_config(o: dict[str, Any]) -> hal.SceneConfig:
    return hal.SceneConfig(image=o["image"], grid=o["grid"], max_objects=o["max_objects"],
                           n_classes=o["n_classes"], prior=o["prior"], n_pairs=o["n_pairs"],
                           pair_prob=o["pair_prob"])


def make_batch(rng: np.random.Generator, objs: list[list[int]], idx: np.ndarray, voc: Vocab, text_len: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Text `[B, T]` and next-token labels `[B, T]` (-100 = unscored): half captions, half questions."""
    x = np.full((len(idx), text_len), voc.pad, dtype=np.int64)
    y = np.full((len(idx), text_len), -100, dtype=np.int64)
    for r, i in enumerate(idx):
        o = objs[i]
        if rng.random() < 0.5:
            seq = [voc.bos, *o, voc.eos]
            x[r, :len(seq)] = seq
            y[r, :len(seq) - 1] = seq[1:]
        else:
            present = rng.random() < 0.5
            absent = [c for c in range(voc.n) if c not in o]
            c = int(rng.choice(o)) if present or not absent else int(rng.choice(absent))
            x[r, :2] = (voc.q, c)
            y[r, 1] = voc.yes if c in o else voc.no
    return torch.from_numpy(x), torch.from_numpy(y)


def pope_eval(model: nn.Module, patches: torch.Tensor, objs: list[list[int]], voc: Vocab, split: str,
              seed: int, blind: bool = False) -> dict[str, float]:
    """POPE on held-out scenes: answer = argmax of the {yes, no} logits after `Q obj`."""
    qs = hal.pope_questions(np.random.default_rng([seed, 7, SPLITS.index(split)]), objs, voc.n, split)
    img = torch.tensor([q[0] for q in qs])
    text = torch.tensor([[voc.q, q[1]] for q in qs])
    p = patches[img]
    if blind:
        p = torch.zeros_like(p)
    with torch.no_grad():
        logits = torch.cat([model(p[s:s + 512], text[s:s + 512])[:, -1] for s in range(0, len(qs), 512)])
    preds = ["yes" if a > b else "no" for a, b in zip(logits[:, voc.yes].tolist(), logits[:, voc.no].tolist(),
                                                        strict=True)]
    return hal.confusion_scores([q[2] for q in qs], preds)


def captions(model: nn.Module, patches: torch.Tensor, voc: Vocab, max_len: int) -> list[list[int]]:
    """Greedy captions (class ids) of at most `max_len` objects; only classes and EOS may be emitted."""
    text = torch.full((len(patches), 1), voc.bos)
    done = torch.zeros(len(patches), dtype=torch.bool)
    allowed = torch.full((voc.size,), float("-inf"))
    allowed[: voc.n] = 0
    allowed[voc.eos] = 0
    with torch.no_grad():
        for _ in range(max_len):
            nxt = (model(patches, text)[:, -1] + allowed).argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, voc.eos), nxt)
            done |= nxt == voc.eos
            text = torch.cat([text, nxt[:, None]], dim=1)
            if bool(done.all()):
                break
    return [[t for t in row[1:] if t < voc.n] for row in text.tolist()]


def evaluate(model: nn.Module, o: dict[str, Any], seed: int, blind: bool = False) -> dict[str, float]:
    """All POPE splits and CHAIR on scenes from the test stream (disjoint from training)."""
    cfg, voc = scene_config(o), Vocab(o["n_classes"])
    rng = data_rng(seed, 1)
    img, objs = hal.scenes(rng, cfg, o["pope_images"], min_objects=2)
    patches = patchify(img, o["patch"])
    out: dict[str, float] = {}
    model.eval()
    for split in SPLITS:
        s = pope_eval(model, patches, objs, voc, split, seed)
        out.update({f"pope_{split}_{k}": s[k] for k in ("acc", "precision", "recall", "f1", "yes_ratio")})
    if blind:
        out["pope_random_acc_blind"] = pope_eval(model, patches, objs, voc, "random", seed, blind=True)["acc"]
    img, objs = hal.scenes(data_rng(seed, 2), cfg, o["chair_images"])
    caps = captions(model, patchify(img, o["patch"]), voc, o["max_caption"])
    ch = hal.chair_from_mentions(caps, [set(x) for x in objs])
    out.update(chair_i=ch.chair_i, chair_s=ch.chair_s, chair_recall=ch.recall, chair_mentions=ch.mean_mentions)
    return out


def train_model(method: str, backend: str, params: dict[str, Any], o: dict[str, Any], seed: int
                ) -> tuple[nn.Module, TrainResult]:
    """Train a Shapes-VLM with `method` (cached per process by method, params, settings and seed)."""
    key = json.dumps([method, backend, params, o, seed], sort_keys=True, default=list)
    if key in _CACHE:
        return _CACHE[key]
    cfg, voc = scene_config(o), Vocab(o["n_classes"])
    text_len = o["max_objects"] + 2
    img, objs = hal.scenes(data_rng(seed, 0), cfg, o["n_pool"])
    patches = patchify(img, o["patch"])
    seed_all(seed)
    n_patches = (o["image"] // o["patch"]) ** 2
    model = ShapesVLM(method, backend, params, voc, patches.shape[-1], n_patches, text_len, o["d_model"],
                      o["n_layers"], o["n_heads"], o.get("kv_heads"))
    rng = data_rng(seed, 3)

    def batch_fn(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = rng.integers(0, len(objs), o["batch_size"])
        x, y = make_batch(rng, objs, idx, voc, text_len)
        return patches[idx], x, y

    def loss_fn(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        p, x, y = batch
        logits = m(p, x)
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1),
                                           ignore_index=-100)

    tc = TrainConfig(steps=o["steps"], lr=o["lr"], weight_decay=o["weight_decay"], warmup=o["warmup"],
                     schedule_steps=o["steps"], wall_cap_s=o["wall_cap_s"])
    res = train(model, batch_fn, loss_fn, tc)  # type: ignore[arg-type]
    _CACHE[key] = (model, res)
    return model, res


@register_suite
class Hallucination(ProxySuite):
    name = "hallucination"
    version = 1
    metrics = (
        higher("pope_adversarial_f1", label="POPE adversarial F1", headline=True),
        lower("chair_i", "fraction", floor=POINT, label="CHAIR-i", headline=True),
        lower("chair_s", "fraction", floor=POINT, label="CHAIR-s"),
        higher("chair_recall", label="CHAIR recall"),
        info("chair_mentions", "objects", label="objects per caption"),
        higher("pope_*_acc"),
        higher("pope_*_precision"),
        higher("pope_*_recall"),
        higher("pope_*_f1"),
        higher("pope_*_acc_blind"),
        info("pope_*_yes_ratio", "fraction"),
        info("delta_*", "fraction"),  # intervention minus its base model, same weights
        # `attnbench analyze` (suite "analysis"): one row per layer × head
        *(info(m, unit) for m, unit in ANALYSIS_UNITS.items()),
    )
    causal = True
    Settings = HallucinationSettings
    tiers = TIERS

    def analyze(self, model: Any, *, method: str, preset: str, seed: int, steps: int | None,
                hunt: bool) -> tuple[list[dict[str, Any]], Callable[[list[dict[str, Any]], str], str]]:
        """`attnbench analyze`: per-layer × per-head score rows of a proxy model, and the heatmap renderer."""
        from attnbench.suites.hallucination import analysis

        rows = analysis.analyze(model, method=method, preset=preset, seed=seed, steps=steps, hunt=hunt)
        return rows, analysis.heatmap_svg

    def applies_to(self, entry: MethodEntry, backend: Backend) -> str | None:
        if entry.spec.wraps_base:
            probe = Workload(batch=1, heads_q=2, seq_q=24, seq_kv=24, head_dim=32, causal=True)
            return entry.spec.why_not(probe, entry.spec.params())
        return super().applies_to(entry, backend)

    def tasks(self, s: HallucinationSettings, entry: MethodEntry,
              device: str) -> list[tuple[Workload, dict[str, Any]]]:
        n = (s.image // s.patch) ** 2 + s.max_objects + 2
        w = Workload(batch=s.batch_size, heads_q=s.n_heads, seq_q=n, seq_kv=n, head_dim=s.d_model // s.n_heads,
                     causal=True, mode="fwd_bwd", device=device)
        return [(w, options(s))]

    def run(self, rc: ResolvedCase) -> list[Row]:
        o, params, seed, w = rc.options, rc.params, rc.seed, rc.workload
        if not rc.spec.wraps_base:
            if (w.heads_q, w.heads_kv) != (o["n_heads"], o["n_heads"]):  # heads fitted or grouped (gqa, mqa)
                o = {**o, "n_heads": w.heads_q, "kv_heads": w.heads_kv}
            model, res = train_model(rc.method, rc.backend, params, o, seed)
            scores = evaluate(model, o, seed, blind=True)
            return [Row(k, v, "fraction" if k != "chair_mentions" else "objects") for k, v in scores.items()] \
                + res.rows()
        model, res = train_model(params["base"], Backend.REFERENCE, iv.base_params(params), o, seed)
        before = evaluate(model, o, seed)
        n_img = (o["image"] // o["patch"]) ** 2
        p = {k: v for k, v in params.items() if k not in ("base", "base_params")}
        spans = {"img_span": [0, n_img], "query_span": [n_img, n_img + o["max_objects"] + 2],
                 "text_span": [n_img, n_img + o["max_objects"] + 2], "demo_span": [0, n_img // 2],
                 "target_span": [n_img // 2, n_img]}
        p.update({k: v for k, v in spans.items() if k in p and p[k] is None})
        p.update(o.get("intervention_params", {}).get(rc.method, {}))
        wrapped = iv.apply_intervention(model, rc.method, p, backend=rc.backend)
        after = evaluate(wrapped, o, seed)
        rows = [Row(k, v, "fraction" if k != "chair_mentions" else "objects") for k, v in after.items()]
        rows += [Row(f"delta_pope_{s}_{m}", after[f"pope_{s}_{m}"] - before[f"pope_{s}_{m}"], "fraction")
                 for s in SPLITS for m in ("f1", "yes_ratio")]
        rows += [Row(f"delta_chair_{m}", after[f"chair_{m}"] - before[f"chair_{m}"], "fraction") for m in ("i", "s")]
        return rows + res.rows()
