"""Object hallucination on the synthetic Shapes-VLM proxy (POPE- and CHAIR-style), proxies card §5(b).

The Shapes-VLM (`model.py`): an image encoder (ViT with CLS) over patches, then a causal decoder over
text tokens {classes, BOS, EOS, Q, yes, no, PAD}, pre-LN blocks with MLP where only the decoder's
attention changes. Scenes (`scoring.SceneConfig`) carry a stated language prior: partner class 2i+1
appears with its anchor 2i in `pair_prob` of the anchor's scenes and never without it. Batches mix
captions `BOS objs(sorted) EOS` and questions `BOS Q obj → yes|no` 50/50 (balanced labels, negatives
uniform over absent classes, so the prior goes unchallenged in training). POPE-adversarial asks for the
absent partner of a present anchor first (`pope_trap_yes_ratio`: the yes-rate on exactly those), CHAIR
captions show prior-driven mentions (`chair_i_prior`: mentions of an absent partner of a present object).

Methods whose spec `wraps_base` (the `intervention` family) are applied at inference on the trained
base (trained once per process and cached) as their papers apply them (`apply.py`): the rows are the
intervention's numbers and `delta_*` against the unmodified base with paired bootstrap intervals over
the same questions / captions. Every other method is trained and evaluated as itself. Brush (subject
insertion) and ConsistEdit (source/target editing) need image-generation inputs the proxy does not have
and are left out with that reason. `sweep.<method>`: extra param points of an intervention, one case each
(the `full` tier sweeps the strengths and ranges each paper tunes; `smoke`/`quick` run the defaults).

Rows: `pope_{random,popular,adversarial}_{acc,precision,recall,f1,yes_ratio}`, `chair_i`, `chair_s`,
`chair_recall`, `chair_mentions`, `chair_i_prior`, `pope_trap_yes_ratio`, `pope_trap_questions`;
`_lo`/`_hi` (95% percentile bootstrap, questions / captions resampled) of POPE acc, F1, yes-ratio and
CHAIR_i/_s; base methods also `pope_random_acc_blind` (image zeroed: the prior-only control) and
`tvhd_hallucinated`/`tvhd_correct_yes` (T-VHD, VHR paper, on POPE-adversarial answers);
interventions `delta_<metric>` with `_lo`/`_hi`; steps, wall_s (training), truncated, train_loss.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from attnbench import density
from attnbench import intervene as iv
from attnbench.metrics import POINT, higher, info, lower
from attnbench.proxy.suite import EFFECTIVE_DENSITY, ProxySettings, ProxySuite, density_row, options
from attnbench.registry import MethodEntry, register_suite
from attnbench.settings import Fraction, Positive, Seconds, settings
from attnbench.spec import Backend, Workload
from attnbench.suite import ResolvedCase, Row
from attnbench.suites.hallucination import scoring as hal  # noqa: F401 - re-exported for callers
from attnbench.suites.hallucination.analysis import UNITS as ANALYSIS_UNITS
from attnbench.suites.hallucination.apply import active_fraction, applied
from attnbench.suites.hallucination.model import Vocab, make_batch, patchify, scene_config, train_model
from attnbench.suites.hallucination.pope import SPLITS, Eval, captions, evaluate, intervals, pope_eval

__all__ = ["SPLITS", "Vocab", "captions", "evaluate", "make_batch", "patchify", "pope_eval", "scene_config",
           "train_model"]

EXCLUDED = {
    "brush": "In-Context Brush inserts a subject into a target image from a demo (diptych) in a diffusion "
             "transformer; the hallucination proxy has no demo/target image pair, so it is not evaluated here",
    "consistedit": "ConsistEdit edits a target image against its source branch (paired generations); the "
                   "hallucination proxy answers questions about one image, so it is not evaluated here",
}


@settings
class HallucinationSettings(ProxySettings):
    """`[suite.hallucination]`: Shapes scenes and their language prior, the Shapes-VLM and its budget, eval
    sizes; `intervention_params.<method>` overrides an intervention's params at inference; `sweep.<method>`
    adds param points (one case each) to an intervention's default."""

    image: int = 32
    grid: int = 2
    max_objects: int = 4
    n_classes: int = 10
    prior: Fraction = 0.8
    n_pairs: int = 5  # classes (0,1) … (8,9): P(partner | anchor) = pair_prob, never a partner alone
    pair_prob: Fraction = 0.75
    adv_frac: Fraction = 0.0
    patch: int = 8
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    enc_layers: int = 1
    lr: float = 3e-3
    weight_decay: float = 0.0
    batch_size: Positive = 64
    steps: Positive = 1_500
    warmup: int = 50
    n_pool: int = 8_192
    pope_images: int = 500
    chair_images: int = 500
    max_caption: int = 5
    n_boot: int = 500
    wall_cap_s: Seconds = 600.0  # a safety net: ~70 s of steps on 2 idle cores, 5× slower on a loaded one
    intervention_params: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    sweep: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)


SMOKE = HallucinationSettings()
# the strengths and layer ranges each paper tunes (full: 4 decoder layers; GIFT's default edits layer 2 only)
FULL_SWEEP = {"softpag": [{"guidance": 1.0}, {"guidance": 5.0}, {"strength": 1.0}],
              "var": [{"keep_frac": 0.3}, {"sink_tau": 5.0}],
              "gift": [{"alpha": 2.5}, {"alpha": 10.0}, {"layer_range": [2, 4]}],
              "imbalance_fix": [{"alpha": 0.35}, {"alpha": 1.4}, {"layer_range": [2, 4]}],
              "vhr": [{"alpha": 1.5}, {"alpha": 3.0}, {"outlier_z": 2.0}]}
TIERS: dict[str, HallucinationSettings] = {
    "smoke": SMOKE,
    "quick": dataclasses.replace(SMOKE, steps=2_000, wall_cap_s=900.0),
    # GPU: 64×64 scenes, 4×4 cells of 16 px, ≤ 8 objects, 30 classes (10 shapes × 3 size bands), 3 seeds
    "full": dataclasses.replace(SMOKE, seeds=(0, 1, 2), image=64, grid=4, max_objects=8, n_classes=30, n_pairs=10,
                                d_model=192, n_layers=4, n_heads=4, enc_layers=2, lr=1e-3, batch_size=128,
                                steps=20_000, warmup=500, n_pool=65_536, pope_images=1_000, chair_images=1_000,
                                max_caption=9, n_boot=1_000, wall_cap_s=7_200.0, sweep=FULL_SWEEP),
}
_BASE_EVAL: dict[str, Eval] = {}


def _rows(scores: dict[str, float]) -> list[Row]:
    units = {"chair_mentions": "objects", "pope_trap_questions": "questions", "tvhd_hallucinated": "l2",
             "tvhd_correct_yes": "l2"}
    return [Row(k, v, units.get(k, "fraction")) for k, v in scores.items()]


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
        lower("chair_i_prior", "fraction", label="CHAIR-i, prior-driven part"),
        lower("pope_trap_yes_ratio", "fraction", label="yes-rate on absent co-occurring partners"),
        info("pope_trap_questions", "questions"),
        info("tvhd_*", "l2"),  # T-VHD (VHR paper) of hallucinated vs correct yes answers
        info("pope_*_lo", "fraction"),  # 95% bootstrap interval over questions
        info("pope_*_hi", "fraction"),
        info("chair_*_lo", "fraction"),  # 95% bootstrap interval over captions
        info("chair_*_hi", "fraction"),
        info("delta_*", "fraction"),  # intervention minus its base model, same weights (with _lo/_hi)
        # `attnbench analyze` (suite "analysis"): one row per layer × head
        *(info(m, unit) for m, unit in ANALYSIS_UNITS.items()),
        EFFECTIVE_DENSITY,
        info("intervention_active", "fraction", label="intervention active"),  # VAR: calls with a detected sink
    )
    causal = True
    Settings = HallucinationSettings
    tiers = TIERS

    def analyze(self, model: Any, *, method: str, preset: str, seed: int, steps: int | None,
                hunt: bool, kind: str = "shapes"
                ) -> tuple[list[dict[str, Any]], Callable[[list[dict[str, Any]], str], str]]:
        """`attnbench analyze`: per-layer × per-head score rows of a proxy model, and the figure renderer.

        `kind`: "shapes" (the Shapes-VLM decoder) or "vit" (an image-classification ViT on digits, with
        attention-pattern clustering: `pattern_cluster` rows and a cluster figure)."""
        from attnbench.suites.hallucination import analysis

        if kind == "vit":
            from attnbench.suites.hallucination import vit

            loaded = None if model is None else model if not isinstance(model, str | Path) else \
                torch.load(model, weights_only=False)
            scores, profiles = vit.analyze_vit(loaded, method=method, seed=seed, steps=steps)
            rows = analysis.to_rows(scores, method)

            def draw(rs: list[dict[str, Any]], metric: str) -> str:
                if metric == "pattern_cluster":
                    return vit.cluster_svg(rs, profiles)
                return analysis.heatmap_svg(rs, metric)

            return rows, draw
        if kind != "shapes":
            raise ValueError(f"unknown model kind {kind!r}; valid: shapes, vit")
        rows = analysis.analyze(model, method=method, preset=preset, seed=seed, steps=steps, hunt=hunt)
        return rows, analysis.heatmap_svg

    def applies_to(self, entry: MethodEntry, backend: Backend) -> str | None:
        if entry.name in EXCLUDED:
            return EXCLUDED[entry.name]
        if entry.spec.wraps_base:
            probe = Workload(batch=1, heads_q=2, seq_q=24, seq_kv=24, head_dim=32, causal=True)
            return entry.spec.why_not(probe, entry.spec.params())
        return super().applies_to(entry, backend)

    def tasks(self, s: HallucinationSettings, entry: MethodEntry,
              device: str) -> list[tuple[Workload, dict[str, Any]]]:
        n = (s.image // s.patch) ** 2 + s.max_objects + 2
        w = Workload(batch=s.batch_size, heads_q=s.n_heads, seq_q=n, seq_kv=n, head_dim=s.d_model // s.n_heads,
                     causal=True, mode="fwd_bwd", device=device)
        opts = options(s)
        if not entry.spec.wraps_base or not s.sweep.get(entry.name):
            return [(w, opts)]
        own = s.intervention_params.get(entry.name, {})
        out = []
        for point in [{}, *s.sweep[entry.name]]:
            entry.spec.params({**own, **point})  # unknown keys raise before anything runs
            ip = {**s.intervention_params, entry.name: {**own, **point}}
            out.append((w, {**opts, "intervention_params": ip, "sweep_point": json.dumps(point, sort_keys=True)}))
        return out

    def run(self, rc: ResolvedCase) -> list[Row]:
        o, params, seed, w = rc.options, rc.params, rc.seed, rc.workload
        n_boot = o.get("n_boot", 500)
        if not rc.spec.wraps_base:
            if (w.heads_q, w.heads_kv) != (o["n_heads"], o["n_heads"]):  # heads fitted or grouped (gqa, mqa)
                o = {**o, "n_heads": w.heads_q, "kv_heads": w.heads_kv}
            model, res = train_model(rc.method, rc.backend, params, o, seed)
            with density.measure() as meter:  # what a sparse decoder really attended while answering
                ev = evaluate(model, o, seed, blind=True)
            return _rows({**ev.scores, **intervals(ev, o, seed, n_boot=n_boot)}) + density_row(meter) + res.rows()
        bp = iv.base_params(params)
        model, res = train_model(params["base"], Backend.REFERENCE, bp, o, seed)
        eval_o = {k: v for k, v in o.items() if k not in ("intervention_params", "sweep", "sweep_point")}
        key = json.dumps([params["base"], bp, eval_o, seed], sort_keys=True, default=list)
        if key not in _BASE_EVAL:
            _BASE_EVAL[key] = evaluate(model, eval_o, seed)
        before = _BASE_EVAL[key]
        n_img = (o["image"] // o["patch"]) ** 2
        p = {k: v for k, v in params.items() if k not in ("base", "base_params")}
        n_text = o["max_objects"] + 2
        spans = {"img_span": [0, n_img], "query_span": [n_img, n_img + n_text], "text_span": [n_img, n_img + n_text]}
        p.update({k: v for k, v in spans.items() if k in p and p[k] is None})
        p.update(o.get("intervention_params", {}).get(rc.method, {}))
        intervened = applied(model, rc.method, p, backend=rc.backend)
        after = evaluate(intervened, o, seed)
        rows = _rows({**after.scores, **intervals(after, o, seed, base=before, n_boot=n_boot)})
        if (active := active_fraction(intervened)) is not None:
            rows.append(Row("intervention_active", active, "fraction"))
        rows += [Row(f"delta_{m}", after.scores[m] - before.scores[m], "fraction")
                 for m in ("chair_i_prior", "pope_trap_yes_ratio") if m in after.scores and m in before.scores]
        return rows + res.rows()
