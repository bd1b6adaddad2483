"""In-context linear regression (He, Pan, Chen, Yang 2025, arXiv 2503.12734; Garg et al. 2022).

`concat` (He et al.): tokens (x_l, y_l) ∈ R^{d+1} then (x_q, 0), β ~ N(0, I/d), y = βᵀx + ε; one
layer of attention with H heads of width d+1, no MLP/LN, no positions; the query's output is
read out. Run as a causal sequence so causal-only methods fit. `interleaved` (Garg et al.): x₁,
(y₁,0…), x₂, … with β ~ N(0, I), predictions at every x slot, errors divided by d.
Garg et al.'s curriculum (`curriculum = {"dims": [start, end, inc, every], "points": [...]}`)
trains on a growing number of active input coordinates and in-context examples; evaluation is
at the full size. Baselines on the same eval prompts: least squares (min-norm), ridge with the
Bayes λ = σ²/Var β, one-step GD (step fitted on held-out prompts), zero, 3-NN and averaging.
Eval prompts are fixed (same for every method and seed) and drawn per number of examples k.
The full tier runs He et al.'s H ∈ {1, 2, 4, 8} and Garg et al.'s d=20 interleaved run with the
curriculum (`variants`: one case per entry).

Rows (the case's seq_len is the training prompt length in tokens; interleaved runs use the
prefix `icl_garg` instead of `icl`, as their errors are divided by d):
    icl_mse, icl_mse_<baseline>             MSE at the training k
    icl_mse/ridge, icl_mse/gd1, icl_mse/zero  ratios of the model to the baselines
    icl_curve_{model,<baseline>}            the same per k, with seq_len = k (error-vs-#examples;
                                            a k the method cannot run, e.g. shorter than its kernel, is left out)
    icl_kq_diag_ratio, icl_ov_y_fraction, icl_ov_y_sum_ratio   learned KQ/OV patterns (optional,
        1-layer generic layers): mean |diag|/|off-diag| of the x-block of each head's KQ
        (embedding folded in), share of each head's OV read-out on the y entry, and |Σ_h OV_y|/Σ_h|OV_y|
    effective_density   fraction of causal pairs a sparse method attended on the training-k eval prompts
    steps, wall_s, truncated, train_loss

Sparse methods run on the density ladder (`densities`, resolved at the training prompt length;
smoke: 0.25 and the paper default where it is sparse; quick/full 1/8, 1/4, 1/2 and the default).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np
import torch

from attnbench import density
from attnbench.layers import AttentionLayer
from attnbench.metrics import info, lower
from attnbench.proxy import data as proxydata
from attnbench.proxy.suite import (
    EFFECTIVE_DENSITY,
    LADDER,
    ProxySettings,
    ProxySuite,
    density_row,
    expand_variants,
    model_config,
    options,
    why_not_at,
)
from attnbench.proxy.train import ProxyModel, TrainConfig, data_rng, predict, seed_all, train
from attnbench.registry import MethodEntry, register_suite
from attnbench.settings import settings
from attnbench.spec import Workload
from attnbench.suite import ResolvedCase, Row

EVAL_SEED = 20_000
Schedule = tuple[int, int, int, int]  # curriculum [start, end, increment, every n steps]


@settings
class ICLSettings(ProxySettings):
    """`[suite.icl_regression]`; `variants` (overrides of these keys) make one case each."""

    format: Literal["concat", "interleaved"] = "concat"
    dim: int = 5
    n_examples: int = 40
    noise_var: float = 0.1
    n_layers: int = 1
    n_heads: int = 4
    head_width: int | None = None  # None: d + 1 (He et al.)
    mlp: bool = False
    norm: bool = False
    pos: Literal["learned", "rope", "none"] = "none"
    lr: float = 3e-3
    optimizer: Literal["adamw", "adam"] = "adam"
    weight_decay: float = 0.0
    batch_size: int = 128
    steps: int = 2_500
    wall_cap_s: float = 300.0
    eval_prompts: int = 4_096
    eval_ks: tuple[int, ...] = (5, 10, 20, 40, 80)
    analysis: bool = True
    curriculum: dict[Literal["dims", "points"], Schedule] | None = None
    variants: tuple[dict[str, Any], ...] = ()


# Smoke: the card's 8k steps at batch 256 take ~240 s here (4 heads of width 6 through a registry
# method cost ~30 ms/step on 2 cores, mostly per-head GEMM overhead); 2.5k steps at batch 128 take
# ~40 s and reach the same level (mha: 0.244 = 1.03× one-step GD; the card's 8k×256 run: 0.244).
SMOKE = ICLSettings()
# Garg et al. 2022: d=20, 41 points, noise-free, GPT-2-like 12 layers × 256 (8 heads), Adam 1e-4, batch
# 64, 500k steps, curriculum dims 5→20 (+1 / 2k steps) and points 11→41 (+2 / 2k steps)
GARG: dict[str, Any] = dict(
    format="interleaved", dim=20, n_examples=41, noise_var=0.0, n_layers=12, n_heads=8, head_width=32,
    mlp=True, norm=True, pos="learned", lr=1e-4, batch_size=64, analysis=False,
    eval_ks=[5, 10, 20, 30, 40], curriculum={"dims": [5, 20, 1, 2_000], "points": [11, 41, 2, 2_000]})
TIERS: dict[str, ICLSettings] = {
    "smoke": SMOKE,
    "quick": dataclasses.replace(SMOKE, densities=LADDER, batch_size=256, steps=8_000, wall_cap_s=900.0),
    "full": dataclasses.replace(SMOKE, densities=LADDER, seeds=(0, 1, 2), batch_size=256, steps=500_000, lr=1e-3,
                                wall_cap_s=36_000.0,
                                eval_ks=(5, 10, 20, 40, 60, 80, 120),
                                variants=({"n_heads": 1}, {"n_heads": 2}, {}, {"n_heads": 8}, GARG)),
}
OPTION_KEYS = ("format", "dim", "n_examples", "noise_var", "n_layers", "mlp", "norm", "pos", "lr", "optimizer",
               "weight_decay", "batch_size", "steps", "wall_cap_s", "eval_prompts", "eval_ks", "analysis",
               "curriculum")


def _beta_var(o: dict[str, Any]) -> float:
    return 1.0 / o["dim"] if o["format"] == "concat" else 1.0


def _tokens(o: dict[str, Any], p: proxydata.RegressionPrompts) -> torch.Tensor:
    if o["format"] == "concat":
        return torch.from_numpy(p.concat_tokens())
    full = proxydata.RegressionPrompts(np.concatenate([p.xs, p.xq[:, None]], 1),
                                       np.concatenate([p.ys, p.yq[:, None]], 1), p.xq, p.yq, p.beta)
    return torch.from_numpy(full.interleaved_tokens()[0])


def _query_prediction(o: dict[str, Any], model: ProxyModel, p: proxydata.RegressionPrompts,
                      batch: int) -> np.ndarray:
    tok = _tokens(o, p).to(next(model.parameters()).device)
    out = predict(model, tok, batch)[:, -1 if o["format"] == "concat" else -2, 0]
    return out.double().cpu().numpy()


def kq_ov_patterns(model: ProxyModel) -> dict[str, float] | None:
    """He et al.'s analysis of a 1-layer model: KQ and OV per head in token coordinates."""
    if len(model.blocks) != 1 or not isinstance(model.blocks[0].attn, AttentionLayer):
        return None
    layer = model.blocks[0].attn
    we = model.embed.weight.detach().double()  # [C, d+1]
    hd, h = layer.head_dim, layer.n_heads
    if layer.kv_heads != h:
        return None
    wq, wkv = layer.q.weight.detach().double(), layer.kv.weight.detach().double()
    wo, head = layer.out.weight.detach().double(), model.head.weight.detach().double()[:1]
    diag, y_frac, ov_y = [], [], []
    for i in range(h):
        sl = slice(i * hd, (i + 1) * hd)
        q_tok, k_tok = wq[sl] @ we, wkv[sl] @ we
        v_tok = wkv[h * hd:][sl] @ we
        kq = (q_tok.T @ k_tok)[:-1, :-1]  # x-block of the bilinear score
        off = (kq.abs().sum() - kq.diagonal().abs().sum()) / max(kq.numel() - len(kq), 1)
        diag.append(float(kq.diagonal().abs().mean() / off.clamp_min(1e-12)))
        ov = (head @ wo[:, sl] @ v_tok)[0]  # read-out of each token entry through this head
        y_frac.append(float(ov[-1].abs() / ov.abs().sum().clamp_min(1e-12)))
        ov_y.append(float(ov[-1]))
    return {"icl_kq_diag_ratio": float(np.mean(diag)), "icl_ov_y_fraction": float(np.mean(y_frac)),
            "icl_ov_y_sum_ratio": abs(sum(ov_y)) / max(sum(abs(v) for v in ov_y), 1e-12)}


@register_suite
class ICLRegression(ProxySuite):
    name = "icl_regression"
    version = 1
    metrics = (
        lower("icl_mse", "mse", label="ICL MSE", headline=True),
        lower("icl_garg_mse", "mse", label="ICL error / d (Garg)", headline=True),
        lower("icl*_mse_*", "mse"),  # the baselines' errors on the same prompts
        lower("icl*_mse/*", "ratio"),  # the model's error over a baseline's
        lower("icl*_curve_*", "mse"),  # error vs number of in-context examples
        info("icl_kq_diag_ratio", "ratio"),
        info("icl_ov_y_fraction", "ratio"),
        info("icl_ov_y_sum_ratio", "ratio"),
        EFFECTIVE_DENSITY,
    )
    causal = True
    Settings = ICLSettings
    tiers = TIERS

    def tasks(self, s: ICLSettings, entry: MethodEntry, device: str) -> list[tuple[Workload, dict[str, Any]]]:
        out = []
        for v in expand_variants(s, f"suite.{self.name}"):
            width = v.head_width or v.dim + 1  # He et al.: per-head width d+1
            seq = v.n_examples + 1 if v.format == "concat" else 2 * v.n_examples
            w = Workload(batch=v.batch_size, heads_q=v.n_heads, heads_kv=v.n_heads, seq_q=seq, seq_kv=seq,
                         head_dim=width, causal=True, mode="fwd_bwd", device=device)
            out.append((w, options(v, OPTION_KEYS)))
        return out

    def run(self, rc: ResolvedCase) -> list[Row]:
        o, seed, chunk = rc.options, rc.seed, rc.case.workload.batch
        d, k_train, nv, bv = o["dim"], o["n_examples"], o["noise_var"], _beta_var(o)
        dev = torch.device(rc.case.workload.device)
        concat = o["format"] == "concat"
        rng = data_rng(seed, 0)
        cur = o["curriculum"] or {}

        def batch_fn(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            dims = proxydata.curriculum_at(step, *cur["dims"]) if "dims" in cur else d
            points = proxydata.curriculum_at(step, *cur["points"]) if "points" in cur else k_train
            p = proxydata.regression(rng, o["batch_size"], d, points, nv, bv, active_dims=dims)
            if concat:
                return torch.from_numpy(p.concat_tokens()).to(dev), torch.from_numpy(p.yq).float().to(dev)
            tok, ys = proxydata.RegressionPrompts(p.xs, p.ys, p.xq, p.yq, p.beta).interleaved_tokens()
            return torch.from_numpy(tok).to(dev), torch.from_numpy(ys).float().to(dev)

        def loss_fn(model: ProxyModel, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            tok, target = batch
            out = model(tok)[..., 0]
            pred = out[:, -1] if concat else out[:, 0::2]
            return torch.nn.functional.mse_loss(pred.float(), target)

        ks = sorted(set(o["eval_ks"]) | {k_train})
        seed_all(seed)
        cfg = model_config(rc, in_dim=d + 1 if concat else d, out_dim=1, n_layers=o["n_layers"], mlp=o["mlp"],
                           norm=o["norm"], pos=o["pos"], max_len=2 * (ks[-1] + 1))
        model = ProxyModel(cfg).to(dev)
        tc = TrainConfig(steps=o["steps"], lr=o["lr"], optimizer=o["optimizer"],
                         weight_decay=o["weight_decay"], wall_cap_s=o["wall_cap_s"])
        res = train(model, batch_fn, loss_fn, tc)
        scale = 1.0 if concat else 1.0 / d
        pre = "icl" if concat else "icl_garg"
        rows: list[Row] = []
        headline: dict[str, float] = {}
        n_eval = o["eval_prompts"]
        for k in ks:
            if k != k_train and why_not_at(rc, k + 1 if concat else 2 * (k + 1)):
                continue  # e.g. a neighbourhood kernel longer than the prompt: no point on the curve
            p = proxydata.regression(np.random.default_rng([EVAL_SEED, k, d]), n_eval, d, k, nv, bv)
            held = proxydata.regression(np.random.default_rng([EVAL_SEED + 1, k, d]), n_eval, d, k, nv, bv)
            with density.measure() as meter:
                model_pred = _query_prediction(o, model, p, chunk)
            if k == k_train:
                rows += density_row(meter)
            preds = {"model": model_pred,
                     **proxydata.icl_baselines(p, nv, bv, proxydata.fit_gd1_step(held))}
            for name, pred in preds.items():
                err = float(np.mean((pred - p.yq) ** 2)) * scale
                rows.append(Row(f"{pre}_curve_{name}", err, "mse", "mean", len(p.yq), extra={"seq_len": k}))
                if k == k_train:
                    headline[name] = err
        model_err = headline.pop("model")
        rows.append(Row(f"{pre}_mse", model_err, "mse", "mean", n_eval))
        rows += [Row(f"{pre}_mse_{name}", v, "mse", "mean", n_eval) for name, v in headline.items()]
        rows += [Row(f"{pre}_mse/{name}", model_err / headline[name], "ratio") for name in ("ridge", "gd1", "zero")]
        if o["analysis"] and (patterns := kq_ov_patterns(model)):
            rows += [Row(m, v, "ratio") for m, v in patterns.items()]
        return rows + res.rows()
