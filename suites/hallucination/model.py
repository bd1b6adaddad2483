"""The Shapes-VLM: a small "LVLM" over coloured-shape scenes, its batches and its (cached) training.

An image encoder (a ViT with a CLS token, fixed multi-head attention) turns the patches into the
prefix, then text tokens {classes, BOS, EOS, Q, yes, no, PAD}; causal pre-LN blocks with MLP where
only the attention changes. Every text starts with BOS (the language model's attention-sink
candidate). Batches mix captions `BOS objs(sorted) EOS` and questions `BOS Q obj → yes|no` 50/50
(balanced labels; a negative is the absent partner of a present anchor with probability `adv_frac`
where one exists, else uniform over absent classes), so the co-occurrence prior of the scenes
(`scoring.SceneConfig`) is in both tasks.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from torch import nn

from attnbench.layers import build_layer
from attnbench.proxy.train import Block, TrainConfig, TrainResult, data_rng, seed_all, train
from attnbench.spec import Backend
from attnbench.suites.hallucination import scoring as hal

_CACHE: dict[str, tuple[nn.Module, TrainResult]] = {}
# options that do not change training (evaluation sizes, intervention settings): not part of the cache key
EVAL_ONLY = ("intervention_params", "sweep", "sweep_point", "n_boot", "pope_images", "chair_images", "max_caption")


class Vocab:
    """Text ids after the classes: BOS, EOS, Q, YES, NO, PAD."""

    def __init__(self, n_classes: int) -> None:
        self.n = n_classes
        self.bos, self.eos, self.q, self.yes, self.no, self.pad = range(n_classes, n_classes + 6)
        self.size = n_classes + 6


class EncoderBlock(nn.Module):
    """A pre-LN ViT block of the image encoder (torch's own multi-head attention: the encoder is fixed, not the
    method under test). In eval mode it keeps the CLS row of its attention, `cls_attn [B, H, 1 + P]`."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
        self.cls_attn: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.ln1(x)
        o, w = self.attn(a, a, a, need_weights=not self.training, average_attn_weights=False)
        self.cls_attn = None if w is None else w[:, :, 0].detach()
        x = x + o
        return x + self.mlp(self.ln2(x))


class ShapesVLM(nn.Module):
    """Image encoder (patch embedding + CLS + `enc_layers` ViT blocks; CLS dropped after it, as LLaVA does) →
    prefix of the decoder; token embedding + learned positions → causal blocks → LN → text head."""

    def __init__(self, method: str, backend: str, params: dict[str, Any], vocab: Vocab, patch_dim: int,
                 n_patches: int, text_len: int, d_model: int, n_layers: int, n_heads: int,
                 kv_heads: int | None = None, enc_layers: int = 1) -> None:
        super().__init__()
        self.n_patches = n_patches
        self.patch = nn.Linear(patch_dim, d_model)
        self.cls = nn.Parameter(torch.randn(1, 1, d_model) * 0.02)
        self.enc_pos = nn.Parameter(torch.randn(n_patches + 1, d_model) * 0.02)
        self.encoder = nn.ModuleList(EncoderBlock(d_model, n_heads) for _ in range(enc_layers))
        self.tok = nn.Embedding(vocab.size, d_model)
        self.pos = nn.Parameter(torch.randn(n_patches + text_len, d_model) * 0.02)
        self.blocks = nn.ModuleList(
            Block(build_layer(method, backend, d_model, n_heads, kv_heads=kv_heads, causal=True, params=params),
                  d_model, True, True)
            for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab.size)

    def embed(self, patches: torch.Tensor | None, text: torch.Tensor) -> torch.Tensor:
        """Input states `[B, P + T, C]`; `patches=None` drops the image (text keeps its positions)."""
        t = self.tok(text) + self.pos[self.n_patches:self.n_patches + text.shape[1]]
        if patches is None:
            return t
        x = torch.cat([self.cls.expand(len(patches), -1, -1), self.patch(patches)], dim=1) + self.enc_pos
        for blk in self.encoder:
            x = blk(x)
        return torch.cat([x[:, 1:] + self.pos[:self.n_patches], t], dim=1)

    def forward(self, patches: torch.Tensor | None, text: torch.Tensor) -> torch.Tensor:
        """`patches [B, P, patch_dim]` (or None: no image), `text [B, T]` → logits `[B, T, vocab]`."""
        h = self.embed(patches, text)
        for blk in self.blocks:
            h = blk(h)
        return self.head(self.ln_f(h[:, h.shape[1] - text.shape[1]:]))

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


def make_batch(rng: np.random.Generator, objs: list[list[int]], idx: np.ndarray, voc: Vocab, text_len: int,
               cfg: hal.SceneConfig, adv_frac: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Text `[B, T]` and next-token labels `[B, T]` (-100 = unscored): half captions, half questions."""
    x = np.full((len(idx), text_len), voc.pad, dtype=np.int64)
    y = np.full((len(idx), text_len), -100, dtype=np.int64)
    for r, i in enumerate(idx):
        o = objs[i]
        if rng.random() < 0.5:
            seq = [voc.bos, *o, voc.eos]
            x[r, :len(seq)] = seq
            y[r, :len(seq) - 1] = seq[1:]
            continue
        absent = [c for c in range(voc.n) if c not in o]
        traps = [b for a in o if (b := cfg.partner(a)) is not None and b not in o]
        if rng.random() < 0.5 or not absent:
            c = int(rng.choice(o))
        elif traps and rng.random() < adv_frac:
            c = int(rng.choice(traps))
        else:
            c = int(rng.choice(absent))
        x[r, :3] = (voc.bos, voc.q, c)
        y[r, 2] = voc.yes if c in o else voc.no
    return torch.from_numpy(x), torch.from_numpy(y)


def build(method: str, backend: str, params: dict[str, Any], o: dict[str, Any], patch_dim: int) -> ShapesVLM:
    n_patches = (o["image"] // o["patch"]) ** 2
    return ShapesVLM(method, backend, params, Vocab(o["n_classes"]), patch_dim, n_patches, o["max_objects"] + 2,
                     o["d_model"], o["n_layers"], o["n_heads"], o.get("kv_heads"), o.get("enc_layers", 1))


def train_model(method: str, backend: str, params: dict[str, Any], o: dict[str, Any], seed: int
                ) -> tuple[nn.Module, TrainResult]:
    """Train a Shapes-VLM with `method` (cached per process by method, params, settings and seed)."""
    train_o = {k: v for k, v in o.items() if k not in EVAL_ONLY}
    key = json.dumps([method, Backend(backend).value, params, train_o, seed], sort_keys=True, default=list)
    if key in _CACHE:
        return _CACHE[key]
    cfg, voc = scene_config(o), Vocab(o["n_classes"])
    text_len = o["max_objects"] + 2
    img, objs = hal.scenes(data_rng(seed, 0), cfg, o["n_pool"])
    patches = patchify(img, o["patch"])
    seed_all(seed)
    model = build(method, backend, params, o, patches.shape[-1])
    rng = data_rng(seed, 3)

    def batch_fn(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = rng.integers(0, len(objs), o["batch_size"])
        x, y = make_batch(rng, objs, idx, voc, text_len, cfg, o.get("adv_frac", 0.0))
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
