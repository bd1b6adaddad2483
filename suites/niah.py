"""Needle in a haystack: synthetic passkey retrieval trained from scratch (RULER / passkey style).

Sequences: filler tokens, `NEEDLE d₁…d_k` at depth δ, and `QUERY d₁…d_k` at the end (teacher
forced; only the k digit predictions are scored). Training draws L ~ U[min_len, max_len] per step
and δ ~ U[0, 1] and stops once the EMA training loss falls below `loss_target`. Evaluation: exact
match of all k digits on a lengths × depths grid with fixed haystacks per cell (the same for every
method and seed); lengths above max_len measure extrapolation, and lengths the method cannot
run (e.g. not a multiple of its block) are left out of the grid. Learned absolute positions cannot
extrapolate, so those cells are left out for `pos = "learned"`. Layer methods that take no `rope`
flag train without positions (see `attnbench.proxy.train.effective_pos`); the scheme used is in the case
options.

RULER's keyed variants (`needles` > 1 distractor keys, `values` per key, `queries` keys asked,
see `proxydata.niah_keyed`) train and score the same way; their metrics are prefixed
`niah_k<needles>v<values>q<queries>` instead of `niah`. Sparse methods run on the density ladder
(`densities`, resolved at max_len; smoke: 0.25 and the paper default). The full tier runs the single needle and
multi-key, multi-value and multi-query variants (`variants`: one case per entry).

Rows (the case's seq_len is max_len):
    niah_acc_depth<δ>   exact match in one grid cell, with seq_len = the cell's length (heat map)
    niah_acc_in_range   mean exact match over cells with L ≤ max_len (headline)
    niah_acc_extrap     mean exact match over cells with L > max_len (absent for learned positions)
    niah_digit_acc_in_range   per-digit accuracy over in-range cells (secondary)
    effective_density   fraction of causal pairs a sparse method attended over the in-range cells
    steps, wall_s, truncated, train_loss
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np
import torch

from attnbench import density
from attnbench.metrics import higher
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
from attnbench.proxy.train import (
    ProxyModel,
    TrainConfig,
    data_rng,
    effective_pos,
    seed_all,
    token_hits,
    token_loss,
    train,
)
from attnbench.registry import MethodEntry, register_suite
from attnbench.settings import settings
from attnbench.spec import Workload
from attnbench.suite import ResolvedCase, Row

EVAL_SEED = 10_000  # eval haystacks are the same for every method and seed


@settings
class NIAHSettings(ProxySettings):
    """`[suite.niah]`; `variants` (overrides of these keys) make one case each."""

    digits: int = 3
    n_filler: int = 64
    haystack: Literal["noise", "periodic"] = "noise"
    min_len: int = 32
    max_len: int = 128
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    mlp: bool = True
    pos: Literal["learned", "rope", "none"] = "rope"
    lr: float = 2e-3
    weight_decay: float = 0.0
    batch_size: int = 32
    warmup: int = 450
    schedule_steps: int = 1_500
    steps: int = 1_500
    loss_target: float = 0.01
    wall_cap_s: float = 300.0
    eval_lens: tuple[int, ...] = (64, 128, 256)
    eval_depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    eval_samples: int = 100
    needles: int = 1
    values: int = 1
    queries: int = 1
    n_keys: int = 16
    variants: tuple[dict[str, Any], ...] = ()


SMOKE = NIAHSettings()
# RULER's niah_single, niah_multikey (3 distractor keys), niah_multivalue, niah_multiquery
RULER_VARIANTS = ({}, {"needles": 4}, {"values": 2}, {"needles": 4, "queries": 2})
TIERS: dict[str, NIAHSettings] = {
    "smoke": SMOKE,
    "quick": dataclasses.replace(SMOKE, densities=LADDER, eval_lens=(64, 128, 256, 512), wall_cap_s=900.0),
    "full": dataclasses.replace(SMOKE, densities=LADDER, seeds=(0, 1, 2), min_len=64, max_len=1024, d_model=256,
                                n_layers=4, n_heads=4, lr=1e-3, warmup=1_000, schedule_steps=20_000, steps=20_000,
                                loss_target=0.001, wall_cap_s=7_200.0, eval_lens=(256, 512, 1024, 2048, 4096, 8192),
                                eval_depths=tuple(i / 10 for i in range(11)), eval_samples=200,
                                variants=RULER_VARIANTS),
}
OPTION_KEYS = ("digits", "n_filler", "haystack", "min_len", "max_len", "n_layers", "mlp", "lr", "weight_decay",
               "batch_size", "warmup", "schedule_steps", "steps", "loss_target", "wall_cap_s", "eval_lens",
               "eval_depths", "eval_samples", "needles", "values", "queries", "n_keys")


@register_suite
class NIAH(ProxySuite[NIAHSettings]):
    name = "niah"
    version = 1
    metrics = (
        higher("niah_acc_in_range", label="NIAH accuracy", headline=True),
        higher("niah_k4v1q1_acc_in_range", label="NIAH multi-key", headline=True),
        higher("niah_k1v2q1_acc_in_range", label="NIAH multi-value", headline=True),
        higher("niah_k4v1q2_acc_in_range", label="NIAH multi-query", headline=True),
        higher("niah_acc_extrap", label="NIAH extrapolation"),
        higher("niah*_acc_*"),  # per depth, digit accuracy, keyed variants (niah_k<n>v<v>q<q>_...)
        EFFECTIVE_DENSITY,
    )
    causal = True
    Settings = NIAHSettings
    tiers = TIERS

    def tasks(self, s: NIAHSettings, entry: MethodEntry, device: str) -> list[tuple[Workload, dict[str, Any]]]:
        pos, why = effective_pos(entry, s.pos)
        out = []
        for v in expand_variants(s, f"suite.{self.name}"):
            opts = {**options(v, OPTION_KEYS), "pos": pos, "pos_note": why}
            w = Workload(batch=v.batch_size, heads_q=v.n_heads, heads_kv=v.n_heads, seq_q=v.max_len,
                         seq_kv=v.max_len, head_dim=v.d_model // v.n_heads, causal=True, mode="fwd_bwd",
                         device=device)
            out.append((w, opts))
        return out

    def run(self, rc: ResolvedCase) -> list[Row]:
        o, seed, batch = rc.options, rc.seed, rc.case.workload.batch
        dev = torch.device(rc.case.workload.device)
        rng = data_rng(seed, 0)
        k, nf = o["digits"], o["n_filler"]
        shape = {key: o[key] for key in ("needles", "values", "queries", "n_keys")}
        keyed = (o["needles"], o["values"], o["queries"]) != (1, 1, 1)
        prefix = "niah_k{needles}v{values}q{queries}".format(**shape) if keyed else "niah"

        def make(gen: np.random.Generator, n: int, length: int, depth: float | None) -> tuple[torch.Tensor, ...]:
            x, y = proxydata.niah(gen, n, length, depth, k, nf, o["haystack"], **shape)
            return torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)

        def batch_fn(step: int) -> tuple[torch.Tensor, ...]:
            return make(rng, o["batch_size"], int(rng.integers(o["min_len"], o["max_len"] + 1)), None)

        seed_all(seed)
        learned = o["pos"] == "learned"
        vocab = proxydata.niah_vocab(nf, o["n_keys"] if keyed else 0)
        cfg = model_config(rc, vocab=vocab, out_dim=vocab, n_layers=o["n_layers"], mlp=o["mlp"], pos=o["pos"],
                           max_len=o["max_len"])
        model = ProxyModel(cfg).to(dev)
        tc = TrainConfig(steps=o["steps"], lr=o["lr"], weight_decay=o["weight_decay"], warmup=o["warmup"],
                         schedule_steps=o["schedule_steps"], loss_target=o["loss_target"],
                         wall_cap_s=o["wall_cap_s"])
        res = train(model, batch_fn, token_loss, tc)
        rows: list[Row] = []
        inside, outside, digit_hits = [], [], []
        meter = density.DensityMeter()  # over the in-range cells, the headline's
        for i, length in enumerate(o["eval_lens"]):
            if (learned and length > o["max_len"]) or why_not_at(rc, length):
                continue
            for j, depth in enumerate(o["eval_depths"]):
                cell_rng = np.random.default_rng([EVAL_SEED, i, j, length])
                x, y = make(cell_rng, o["eval_samples"], length, depth)
                with density.measure() as cell:
                    hits, total = token_hits(model, x, y, batch)
                if length <= o["max_len"]:
                    meter.attended, meter.allowed = meter.attended + cell.attended, meter.allowed + cell.allowed
                exact = float((hits == total).mean())
                rows.append(Row(f"{prefix}_acc_depth{depth:g}", exact, "fraction", n=len(x),
                                extra={"seq_len": length, "seq_kv": length}))
                (inside if length <= o["max_len"] else outside).append(exact)
                if length <= o["max_len"]:
                    digit_hits.append(float(hits.sum() / total.sum()))
        rows.append(Row(f"{prefix}_acc_in_range", float(np.mean(inside)), "fraction", "mean", len(inside)))
        rows.append(Row(f"{prefix}_digit_acc_in_range", float(np.mean(digit_hits)), "fraction", "mean",
                        len(inside)))
        rows += density_row(meter)
        if outside:
            rows.append(Row(f"{prefix}_acc_extrap", float(np.mean(outside)), "fraction", "mean", len(outside)))
        return rows + res.rows()
