"""MQAR — multi-query associative recall (Zoology, Arora et al. 2023, arXiv 2312.04927).

Each case trains the proxy model (learned positions, no MLP, pre-LN) on Zoology's generator at
one sequence length L with the key-value counts `kv_pairs` mixed in the training set, over an
in-case learning-rate sweep, and evaluates argmax accuracy on the scored (query) positions of a
test set drawn from a disjoint stream.

Rows (the case's seq_len is L, head_dim·heads the model width):
    mqar_acc            accuracy, max over the LR sweep (per example, then mean)
    mqar_acc_k<K>       the same model's accuracy on the K-pair slice of the test set
    mqar_acc_lr<lr>     accuracy per learning rate (only when the sweep has > 1 LR)
    steps_to_target     first eval step at which accuracy ≥ target (absent if never reached)
    effective_density   fraction of causal (q, k) pairs a sparse method attended in the chosen run's
                        final evaluation (absent for dense methods)
    steps, wall_s (all LRs), truncated (any LR hit the wall cap), train_loss

Sparse methods run on the density ladder (`densities`, `attnbench.proxy.suite.density_ladder`):
smoke 0.25 plus the paper default where it is sparse at L; quick/full 1/8, 1/4, 1/2 and the default.
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
    model_config,
    options,
)
from attnbench.proxy.train import ProxyModel, TrainConfig, data_rng, seed_all, token_hits, token_loss, train
from attnbench.registry import MethodEntry, register_suite
from attnbench.settings import settings
from attnbench.spec import Workload
from attnbench.suite import ResolvedCase, Row


@settings
class MQARSettings(ProxySettings):
    """`[suite.mqar]`: one training set per (seq_len[i], kv_pairs[i]), × d_model, × lrs inside a case."""

    vocab: int = 256
    seq_len: tuple[int, ...] = (64,)
    kv_pairs: tuple[tuple[int, ...], ...] = ((4, 8),)  # key-value counts mixed per seq_len
    power_a: float = 0.01
    random_non_queries: bool = True
    n_train: int = 20_000
    n_test: int = 1_000
    d_model: tuple[int, ...] = (64,)
    n_layers: int = 2
    n_heads: int = 1
    pos: Literal["learned", "rope", "none"] = "learned"
    lrs: tuple[float, ...] = (3e-3,)
    weight_decay: float = 0.1
    batch_size: int = 64
    warmup: int = 450
    schedule_steps: int = 9_360
    steps: int = 1_500
    eval_every: int = 156
    target: float = 0.99
    wall_cap_s: float = 300.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.seq_len) != len(self.kv_pairs):
            raise ValueError(f"seq_len ({len(self.seq_len)} entries) and kv_pairs ({len(self.kv_pairs)}) "
                             "must pair up")


SMOKE = MQARSettings()
TIERS: dict[str, MQARSettings] = {
    "smoke": SMOKE,
    "quick": dataclasses.replace(SMOKE, densities=LADDER, seq_len=(64, 128), kv_pairs=((4, 8), (8,)), vocab=512,
                                 steps=3_000, wall_cap_s=900.0),
    # Zoology Fig. 2: V=8192, (L, K) grid, d sweep, LR sweep (max over LRs), 3 seeds, 64 epochs
    "full": dataclasses.replace(SMOKE, densities=LADDER, seeds=(0, 1, 2), vocab=8192, seq_len=(64, 128, 256, 512),
                                kv_pairs=((4,), (8,), (16,), (64,)), n_train=100_000, n_test=3_000,
                                d_model=(64, 128, 256, 512), lrs=(1e-4, 4.64e-4, 2.15e-3, 1e-2), batch_size=256,
                                warmup=1_000, schedule_steps=25_000, steps=25_000, eval_every=390,
                                wall_cap_s=7_200.0, random_non_queries=False),
}
OPTION_KEYS = ("vocab", "power_a", "random_non_queries", "n_train", "n_test", "n_layers", "pos", "lrs",
               "weight_decay", "batch_size", "warmup", "schedule_steps", "steps", "eval_every", "target",
               "wall_cap_s")


@register_suite
class MQAR(ProxySuite[MQARSettings]):
    name = "mqar"
    version = 1
    metrics = (
        higher("mqar_acc", label="MQAR accuracy", headline=True),
        higher("mqar_acc_*"),  # per K slice (k<K>) and per learning rate (lr<lr>)
        EFFECTIVE_DENSITY,
    )
    causal = True
    Settings = MQARSettings
    tiers = TIERS

    def tasks(self, s: MQARSettings, entry: MethodEntry, device: str) -> list[tuple[Workload, dict[str, Any]]]:
        out = []
        for seq_len, ks in zip(s.seq_len, s.kv_pairs, strict=True):
            for d in s.d_model:
                w = Workload(batch=s.batch_size, heads_q=s.n_heads, heads_kv=s.n_heads, seq_q=seq_len,
                             seq_kv=seq_len, head_dim=d // s.n_heads, causal=True, mode="fwd_bwd", device=device)
                out.append((w, {**options(s, OPTION_KEYS), "kv_pairs": list(ks)}))
        return out

    def run(self, rc: ResolvedCase) -> list[Row]:
        o, w, seed = rc.options, rc.case.workload, rc.seed
        dev = torch.device(w.device)
        ks = o["kv_pairs"]

        def make(stream: int, n: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
            rng = data_rng(seed, stream)
            parts = [proxydata.mqar(rng, n // len(ks), o["vocab"], w.seq_q, k, o["power_a"],
                                    o["random_non_queries"]) for k in ks]
            kcol = np.concatenate([np.full(n // len(ks), k) for k in ks])
            x = torch.from_numpy(np.concatenate([p[0] for p in parts])).to(dev)
            y = torch.from_numpy(np.concatenate([p[1] for p in parts])).to(dev)
            return x, y, kcol

        x_tr, y_tr, _ = make(0, o["n_train"])
        x_te, y_te, k_te = make(1, o["n_test"])
        per_epoch = len(x_tr) // o["batch_size"]
        perm_gen = torch.Generator().manual_seed(seed)
        perms: dict[int, torch.Tensor] = {}

        def batch_fn(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            epoch, i = divmod(step, per_epoch)
            if epoch not in perms:
                perms.clear()
                perms[epoch] = torch.randperm(len(x_tr), generator=perm_gen).to(dev)
            idx = perms[epoch][i * o["batch_size"]:(i + 1) * o["batch_size"]]
            return x_tr[idx], y_tr[idx]

        def accuracy(model: ProxyModel) -> np.ndarray:
            hits, total = token_hits(model, x_te, y_te, w.batch)
            return hits / np.maximum(total, 1)

        runs = []
        for lr in o["lrs"]:
            seed_all(seed)
            perms.clear()
            perm_gen.manual_seed(seed)
            cfg = model_config(rc, vocab=o["vocab"], out_dim=o["vocab"], n_layers=o["n_layers"], mlp=False,
                               pos=o["pos"], max_len=w.seq_q)
            model = ProxyModel(cfg).to(dev)
            tc = TrainConfig(steps=o["steps"], lr=lr, weight_decay=o["weight_decay"], warmup=o["warmup"],
                             schedule_steps=o["schedule_steps"], eval_every=o["eval_every"],
                             target=o["target"], wall_cap_s=o["wall_cap_s"])
            res = train(model, batch_fn, token_loss, tc, lambda m: float(accuracy(m).mean()))
            with density.measure() as meter:
                pe = accuracy(model)
            runs.append((float(pe.mean()), lr, res, pe, meter))
        acc, _, best, per_example, meter = max(runs, key=lambda r: r[0])
        rows = [Row("mqar_acc", acc, "fraction", "max" if len(runs) > 1 else "value", len(per_example))]
        rows += density_row(meter)
        rows += [Row(f"mqar_acc_k{k}", float(per_example[k_te == k].mean()), "fraction",
                     n=int((k_te == k).sum())) for k in ks]
        if len(runs) > 1:
            rows += [Row(f"mqar_acc_lr{lr:g}", a, "fraction") for a, lr, *_ in runs]
        reached = [s for s, v in best.evals if v >= o["target"]]
        if reached:
            rows.append(Row("steps_to_target", reached[0], "steps"))
        rows += best.rows()
        rows = [r for r in rows if r.metric not in ("wall_s", "truncated")]
        rows += [Row("wall_s", sum(r[2].wall_s for r in runs), "s"),
                 Row("truncated", float(any(r[2].truncated for r in runs)), "bool")]
        return rows
