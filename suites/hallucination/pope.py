"""POPE and CHAIR on the Shapes-VLM, per-question records, and paired bootstrap intervals over questions.

`evaluate(model, o, seed)` returns `Eval`: the scores (`pope_<split>_<m>`, `chair_*`) and the
records they come from (per POPE split: labels and predictions; per caption: mentions and truth),
so an intervention's delta against its base can be bootstrapped over the same questions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from attnbench.proxy.train import data_rng
from attnbench.suites.hallucination import scoring as hal
from attnbench.suites.hallucination.model import Vocab, patchify, scene_config

SPLITS = ("random", "popular", "adversarial")
POPE_KEYS = ("acc", "precision", "recall", "f1", "yes_ratio")
INTERVAL_KEYS = ("acc", "f1", "yes_ratio")  # POPE metrics that get a bootstrap interval
Forward = Callable[[torch.Tensor | None, torch.Tensor], torch.Tensor]


@dataclass
class Eval:
    scores: dict[str, float]
    pope: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # split → (label yes, pred yes)
    chair: tuple[list[list[int]], list[set[int]]] = ((), ())  # type: ignore[assignment]


def answers(model: Forward, patches: torch.Tensor | None, text: torch.Tensor, voc: Vocab) -> np.ndarray:
    """Bool `[n]`: the yes logit beats the no logit at the last text position (batches of 512)."""
    out = []
    with torch.no_grad():
        for s in range(0, len(text), 512):
            last = model(None if patches is None else patches[s:s + 512], text[s:s + 512])[:, -1]
            out.append((last[:, voc.yes] > last[:, voc.no]).numpy())
    return np.concatenate(out)


def pope_eval(model: Forward, patches: torch.Tensor, objs: list[list[int]], voc: Vocab, split: str, seed: int,
              cfg: hal.SceneConfig, blind: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """POPE questions `BOS Q obj` on held-out scenes → (label is yes, predicted yes, trap), bool arrays; a trap
    is a negative whose stated co-occurring partner is in the scene (the prior says yes, the image no)."""
    qs = hal.pope_questions(np.random.default_rng([seed, 7, SPLITS.index(split)]), objs, voc.n, split,
                            partner=cfg.partner)
    p = patches[torch.tensor([q[0] for q in qs])]
    text = torch.tensor([[voc.bos, voc.q, q[1]] for q in qs])
    pred = answers(model, torch.zeros_like(p) if blind else p, text, voc)
    trap = [q[2] == "no" and cfg.partner(q[1]) in objs[q[0]] for q in qs]
    return np.array([q[2] == "yes" for q in qs]), pred, np.array(trap, dtype=bool)


def tvhd_scores(model: Forward, patches: torch.Tensor, objs: list[list[int]], voc: Vocab, seed: int,
                cfg: hal.SceneConfig) -> dict[str, float]:
    """T-VHD (VHR paper: Σ over layers and heads of the true VHD at the answer position) on POPE-adversarial,
    mean over the hallucinated answers (yes to an absent object) and over the correct yes answers; empty
    when the model has no generic attention layers."""
    from attnbench.impls.vhr import t_vhd
    from attnbench.suites.hallucination.apply import decoder_layers, true_vhd

    if not isinstance(model, nn.Module) or not decoder_layers(model):
        return {}
    qs = hal.pope_questions(np.random.default_rng([seed, 7, SPLITS.index("adversarial")]), objs, voc.n,
                            "adversarial", partner=cfg.partner)
    p = patches[torch.tensor([q[0] for q in qs])]
    text = torch.tensor([[voc.bos, voc.q, q[1]] for q in qs])
    score = torch.cat([t_vhd(true_vhd(model, p[s:s + 512], text[s:s + 512])) for s in range(0, len(qs), 512)])
    pred = answers(model, p, text, voc)
    label = np.array([q[2] == "yes" for q in qs])
    out = {}
    for name, sel in (("tvhd_hallucinated", pred & ~label), ("tvhd_correct_yes", pred & label)):
        if sel.any():
            out[name] = float(score[torch.from_numpy(sel)].mean())
    return out


def confusion(label: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """POPE scores along the last axis of bool arrays (vectorised for bootstrap resamples)."""
    tp = (label & pred).sum(-1)
    fp = (~label & pred).sum(-1)
    fn = (label & ~pred).sum(-1)
    n = label.shape[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
        rec = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
        f1 = np.where(prec + rec > 0, 2 * prec * rec / np.where(prec + rec > 0, prec + rec, 1), 0.0)
    return {"acc": (label == pred).sum(-1) / n, "precision": prec, "recall": rec, "f1": f1,
            "yes_ratio": pred.sum(-1) / n}


def captions(model: Forward, patches: torch.Tensor, voc: Vocab, max_len: int) -> list[list[int]]:
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


def chair_arrays(mentions: Sequence[Sequence[int]], truth: Sequence[set[int]], cfg: hal.SceneConfig
                 ) -> np.ndarray:
    """Per caption `[n, 3]`: mentions, hallucinated mentions, prior-driven hallucinated mentions
    (an absent object whose stated partner is present)."""
    rows = []
    for m, t in zip(mentions, truth, strict=True):
        bad = [c for c in m if c not in t]
        rows.append((len(m), len(bad), sum(cfg.partner(c) in t for c in bad)))
    return np.array(rows, dtype=np.float64).reshape(-1, 3)


def chair_scores(a: np.ndarray) -> dict[str, np.ndarray]:
    """CHAIR_i, CHAIR_s and the prior-driven part of CHAIR_i from `[..., n, 3]` arrays."""
    ment, bad, prior = a[..., 0].sum(-1), a[..., 1].sum(-1), a[..., 2].sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"chair_i": np.where(ment > 0, bad / np.maximum(ment, 1), 0.0), "chair_s": (a[..., 1] > 0).mean(-1),
                "chair_i_prior": np.where(ment > 0, prior / np.maximum(ment, 1), 0.0)}


def evaluate(model: Forward, o: dict[str, Any], seed: int, blind: bool = False) -> Eval:
    """All POPE splits and CHAIR on scenes from the test stream (disjoint from training)."""
    cfg, voc = scene_config(o), Vocab(o["n_classes"])
    img, objs = hal.scenes(data_rng(seed, 1), cfg, o["pope_images"], min_objects=2)
    patches = patchify(img, o["patch"])
    if isinstance(model, nn.Module):
        model.eval()
    ev = Eval({})
    for split in SPLITS:
        label, pred, trap = pope_eval(model, patches, objs, voc, split, seed, cfg)
        ev.pope[split] = (label, pred)
        ev.scores.update({f"pope_{split}_{k}": float(v) for k, v in confusion(label, pred).items()})
        if split == "adversarial":
            if trap.any():  # absent where no scene holds an anchor without its partner
                ev.scores["pope_trap_yes_ratio"] = float(pred[trap].mean())
            ev.scores["pope_trap_questions"] = float(trap.sum())
    if blind:
        label, pred, _ = pope_eval(model, patches, objs, voc, "random", seed, cfg, blind=True)
        ev.scores["pope_random_acc_blind"] = float(confusion(label, pred)["acc"])
        ev.scores.update(tvhd_scores(model, patches, objs, voc, seed, cfg))
    img, objs = hal.scenes(data_rng(seed, 2), cfg, o["chair_images"])
    caps = captions(model, patchify(img, o["patch"]), voc, o["max_caption"])
    truth = [set(x) for x in objs]
    ev.chair = (caps, truth)
    ch = hal.chair_from_mentions(caps, truth)
    ev.scores.update(chair_i=ch.chair_i, chair_s=ch.chair_s, chair_recall=ch.recall,
                     chair_mentions=ch.mean_mentions,
                     chair_i_prior=float(chair_scores(chair_arrays(caps, truth, cfg))["chair_i_prior"]))
    return ev


def intervals(ev: Eval, o: dict[str, Any], seed: int, base: Eval | None = None, n_boot: int = 500,
              level: float = 0.95) -> dict[str, float]:
    """Percentile bootstrap intervals over questions (POPE) and captions (CHAIR): `<metric>_lo/_hi`, and with
    `base` the paired delta `delta_<metric>` (ev − base on the same resamples) with its `_lo/_hi`."""
    cfg = scene_config(o)
    rng = np.random.default_rng([seed, 11])
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    out: dict[str, float] = {}

    def put(name: str, point: float, samples: np.ndarray) -> None:
        out[name] = point
        out[f"{name}_lo"], out[f"{name}_hi"] = (float(x) for x in np.percentile(samples, [lo_q, hi_q]))

    for split in SPLITS:
        label, pred = ev.pope[split]
        idx = rng.integers(0, len(label), (n_boot, len(label)))
        got = confusion(label[idx], pred[idx])
        ref = confusion(label[idx], base.pope[split][1][idx]) if base is not None else None
        for k in INTERVAL_KEYS:
            name = f"pope_{split}_{k}"
            put(name, ev.scores[name], got[k])
            if ref is not None:
                put(f"delta_{name}", ev.scores[name] - base.scores[name], got[k] - ref[k])
    a = chair_arrays(*ev.chair, cfg)
    idx = rng.integers(0, len(a), (n_boot, len(a)))
    got = chair_scores(a[idx])
    ref = chair_scores(chair_arrays(*base.chair, cfg)[idx]) if base is not None else None
    for k in ("chair_i", "chair_s"):
        put(k, ev.scores[k], got[k])
        if ref is not None:
            put(f"delta_{k}", ev.scores[k] - base.scores[k], got[k] - ref[k])
    return out
