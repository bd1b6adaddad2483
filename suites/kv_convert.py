"""KV-head conversion — DHA (Chen et al., NeurIPS 2024, arXiv 2406.06567; methods card §12) against
GQA's mean-pooling (Ainslie et al., arXiv 2305.13245), at equal KV-cache budgets.

Each case trains the proxy model with `mha` on one task (MQAR or fixed-length NIAH), then converts
every layer's K/V heads at each budget (fraction of the source's `2·H` cached heads per layer):
- `dha`: key heads and, independently, value heads clustered by the cosine similarity of their
  projection weights (`attnbench.hf.convert.similarity_groups`) into `n_K = n_V = budget·H`
  groups, each fused by the mean of its heads (uniform ω, the card's initialisation); query heads
  kept; the layer becomes a `dha` layer with those decoupled maps.
- `gqa`: contiguous groups of `H / n` heads mean-pooled (K and V share the groups).
Both are scored zero-shot and after `uptrain_steps` of continued training on the same task (the
papers' continued pre-training / uptraining, scaled down; the paper's learned ω and head-budget
search are not done). The case runs on the `dha` row; GQA is its baseline, side by side.

Rows (`<t>` the task, `<c>` dha|gqa, `<p>` the budget in percent):
    kvc_<t>_acc_src                source MHA accuracy
    kvc_<t>_acc_<c>_kv<p>          converted accuracy after uptraining
    kvc_<t>_retained_<c>_kv<p>     that / source accuracy (the paper's "performance retained")
    kvc_<t>_retained0_<c>_kv<p>    zero-shot (no uptraining) / source accuracy
    kvc_<t>_kv_bytes_src, kvc_<t>_kv_bytes_<c>_kv<p>   KV-cache bytes of one test sequence, all layers
    steps, wall_s, truncated, train_loss (the source's training)
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Literal

import numpy as np
import torch

from attnbench.hf.convert import similarity_groups
from attnbench.impls.dha import DHAttention, dha_kv_cache_bytes
from attnbench.layers import AttentionLayer
from attnbench.metrics import higher, info
from attnbench.proxy import data as proxydata
from attnbench.proxy.suite import ProxySettings, ProxySuite, model_config, options
from attnbench.proxy.train import ProxyModel, TrainConfig, data_rng, seed_all, token_hits, token_loss, train
from attnbench.registry import MethodEntry, register_suite
from attnbench.settings import Positive, Seconds, settings
from attnbench.spec import Backend, Workload
from attnbench.suite import ResolvedCase, Row

CONVERSIONS = ("dha", "gqa")


def _maps(groups: list[list[int]], n_heads: int) -> tuple[tuple[int, ...], torch.Tensor]:
    """(head → group map, ω: 1/|group| per head) of a grouping."""
    label = {h: j for j, g in enumerate(groups) for h in g}
    omega = torch.tensor([1.0 / len(groups[label[h]]) for h in range(n_heads)])
    return tuple(label[h] for h in range(n_heads)), omega


@torch.no_grad()
def convert_layer(layer: AttentionLayer, how: str, n_k: int, n_v: int, backend: Backend | str | None = None
                  ) -> DHAttention:
    """A `dha` layer from a trained `mha` AttentionLayer: `n_k` key heads and `n_v` value heads.

    `how="dha"`: K heads and V heads grouped separately by weight similarity; `how="gqa"`:
    contiguous groups of `H/n` heads (needs `n_k == n_v` dividing H). Groups fused by their mean.
    `backend`: the dha step to run (default: the source layer's backend).
    """
    h, d = layer.n_heads, layer.head_dim
    if layer.kv_heads != h:
        raise ValueError(f"convert_layer: the source must be MHA ({layer.kv_heads} kv heads for {h})")
    wk, wv = layer.kv.weight.unflatten(0, (2, h * d))
    if how == "gqa":
        if n_k != n_v or h % n_k:
            raise ValueError(f"gqa: {h} heads cannot be mean-pooled into {n_k} K and {n_v} V heads")
        groups_k = groups_v = [list(range(j * h // n_k, (j + 1) * h // n_k)) for j in range(n_k)]
    elif how == "dha":
        groups_k = similarity_groups(wk.unflatten(0, (h, d)).flatten(1), n_k)
        groups_v = similarity_groups(wv.unflatten(0, (h, d)).flatten(1), n_v)
    else:
        raise ValueError(f"unknown conversion {how!r}; valid: {', '.join(CONVERSIONS)}")
    kmap, omega_k = _maps(groups_k, h)
    vmap, omega_v = _maps(groups_v, h)
    out = DHAttention(layer.q.in_features, h, backend=backend or layer.backend, causal=layer.causal, k_heads=n_k,
                      v_heads=n_v, kmap=kmap, vmap=vmap, rope=layer.rope)
    out.load_fused(layer.q.weight, wk, wv, layer.out.weight, omega_k, omega_v)
    return out.to(device=wk.device, dtype=wk.dtype)


def convert_model(model: ProxyModel, how: str, n_k: int, n_v: int, backend: Backend | str | None = None
                  ) -> ProxyModel:
    """A copy of an all-`mha` proxy model with every layer converted (`convert_layer`)."""
    out = copy.deepcopy(model)
    for blk in out.blocks:
        blk.attn = convert_layer(blk.attn, how, n_k, n_v, backend)
    return out


def kv_bytes(model: ProxyModel, seq_len: int) -> float:
    """KV-cache bytes of one `seq_len` sequence over all layers (card §12 formula per layer)."""
    total = 0.0
    for blk in model.blocks:
        a = blk.attn
        w = Workload(batch=1, heads_q=a.n_heads, heads_kv=a.n_heads, seq_q=seq_len, seq_kv=seq_len,
                     head_dim=a.head_dim, dtype="float32")
        if isinstance(a, DHAttention):
            params = {"k_heads": 0, "v_heads": 0, "kmap": a.kmap, "vmap": a.vmap}
        else:
            params = {"k_heads": 0, "v_heads": 0, "kmap": [h * a.kv_heads // a.n_heads for h in range(a.n_heads)],
                      "vmap": [h * a.kv_heads // a.n_heads for h in range(a.n_heads)]}
        total += dha_kv_cache_bytes(w, params)
    return total


@settings
class KVConvertSettings(ProxySettings):
    """`[suite.kv_convert]`: one case per task; budgets, conversions and uptraining inside a case."""

    tasks: tuple[Literal["mqar", "niah"], ...] = ("mqar",)
    budgets: tuple[float, ...] = (0.25, 0.5)
    d_model: int = 64
    n_heads: int = 8
    n_layers: int = 2
    seq_len: int = 64
    vocab: int = 256  # MQAR
    kv_pairs: tuple[int, ...] = (4, 8)  # MQAR
    digits: int = 3  # NIAH
    n_filler: int = 64  # NIAH
    n_train: int = 20_000
    n_test: int = 500
    lr: float = 3e-3
    weight_decay: float = 0.1
    batch_size: Positive = 64
    warmup: int = 150
    steps: Positive = 1_500
    uptrain_steps: int = 150
    uptrain_lr: float = 1e-3
    wall_cap_s: Seconds = 300.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for b in self.budgets:
            if not 0 < b <= 1 or round(b * self.n_heads) < 1:
                raise ValueError(f"budget {b} leaves no kv head of {self.n_heads}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")


SMOKE = KVConvertSettings()
TIERS: dict[str, KVConvertSettings] = {
    "smoke": SMOKE,
    "quick": dataclasses.replace(SMOKE, tasks=("mqar", "niah"), budgets=(0.125, 0.25, 0.5), steps=3_000,
                                 uptrain_steps=300, wall_cap_s=900.0),
    "full": dataclasses.replace(SMOKE, tasks=("mqar", "niah"), budgets=(0.125, 0.25, 0.5), seeds=(0, 1, 2),
                                d_model=128, seq_len=128, kv_pairs=(8, 16), steps=10_000, uptrain_steps=1_000,
                                n_train=100_000, n_test=2_000, wall_cap_s=7_200.0),
}
OPTION_KEYS = ("budgets", "n_layers", "vocab", "kv_pairs", "digits", "n_filler", "n_train", "n_test", "lr",
               "weight_decay", "batch_size", "warmup", "steps", "uptrain_steps", "uptrain_lr", "wall_cap_s")


@register_suite
class KVConvert(ProxySuite[KVConvertSettings]):
    name = "kv_convert"
    version = 1
    metrics = (
        higher("kvc_mqar_retained_dha_kv25", "ratio", label="DHA retained @25% KV (MQAR)", headline=True),
        higher("kvc_*_retained*", "ratio"),
        higher("kvc_*_acc_*"),
        info("kvc_*_kv_bytes_*", "bytes"),
    )
    causal = True
    Settings = KVConvertSettings
    tiers = TIERS

    def applies_to(self, entry: MethodEntry, backend: Backend) -> str | None:
        if entry.name != "dha":
            return f"{self.name} converts a trained MHA checkpoint to DHA (and GQA, its baseline): dha row only"
        return super().applies_to(entry, backend)

    def tasks(self, s: KVConvertSettings, entry: MethodEntry, device: str) -> list[tuple[Workload, dict[str, Any]]]:
        if entry.name != "dha":
            return []
        w = Workload(batch=s.batch_size, heads_q=s.n_heads, heads_kv=s.n_heads, seq_q=s.seq_len, seq_kv=s.seq_len,
                     head_dim=s.d_model // s.n_heads, causal=True, mode="fwd_bwd", device=device)
        return [(w, {**options(s, OPTION_KEYS), "task": t}) for t in s.tasks]

    def _data(self, o: dict[str, Any], seed: int, w: Workload, dev: torch.device
              ) -> tuple[int, Any, torch.Tensor, torch.Tensor]:
        """(vocab, batch_fn, test inputs, test labels) of the case's task."""
        if o["task"] == "mqar":
            vocab, ks = o["vocab"], o["kv_pairs"]

            def make(stream: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
                rng = data_rng(seed, stream)
                parts = [proxydata.mqar(rng, n // len(ks), vocab, w.seq_q, k) for k in ks]
                return tuple(torch.from_numpy(np.concatenate([p[i] for p in parts])).to(dev) for i in (0, 1))

            x_tr, y_tr = make(0, o["n_train"])
            gen = torch.Generator().manual_seed(seed)
            order = torch.cat([torch.randperm(len(x_tr), generator=gen) for _ in range(
                1 + (o["steps"] + o["uptrain_steps"]) * o["batch_size"] // len(x_tr))]).to(dev)

            def batch_fn(step: int) -> tuple[torch.Tensor, torch.Tensor]:
                idx = order[step * o["batch_size"]:(step + 1) * o["batch_size"]]
                return x_tr[idx], y_tr[idx]

            return (vocab, batch_fn, *make(1, o["n_test"]))
        vocab = proxydata.niah_vocab(o["n_filler"])
        rng = data_rng(seed, 0)

        def niah(gen: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
            x, y = proxydata.niah(gen, n, w.seq_q, None, o["digits"], o["n_filler"])
            return torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)

        return (vocab, lambda step: niah(rng, o["batch_size"]), *niah(data_rng(seed, 1), o["n_test"]))

    def run(self, rc: ResolvedCase) -> list[Row]:
        o, w, seed, t = rc.options, rc.case.workload, rc.seed, rc.options["task"]
        dev = torch.device(w.device)
        vocab, batch_fn, x_te, y_te = self._data(o, seed, w, dev)
        exact = t == "niah"  # NIAH scores the whole passkey; MQAR the fraction of recalled values

        def accuracy(model: ProxyModel) -> float:
            hits, total = token_hits(model, x_te, y_te, w.batch)
            return float((hits == total).mean() if exact else (hits / np.maximum(total, 1)).mean())

        seed_all(seed)
        src_backend = rc.backend if rc.backend in (Backend.REFERENCE, Backend.SDPA) else Backend.REFERENCE
        cfg = dataclasses.replace(model_config(rc, vocab=vocab, out_dim=vocab, n_layers=o["n_layers"], pos="learned",
                                               max_len=w.seq_q), method="mha", backend=src_backend, params={})
        src = ProxyModel(cfg).to(dev)
        tc = TrainConfig(steps=o["steps"], lr=o["lr"], weight_decay=o["weight_decay"], warmup=o["warmup"],
                         schedule_steps=o["steps"], wall_cap_s=o["wall_cap_s"])
        res = train(src, batch_fn, token_loss, tc)
        acc_src = accuracy(src)
        rows = [Row(f"kvc_{t}_acc_src", acc_src, "fraction", n=len(x_te)),
                Row(f"kvc_{t}_kv_bytes_src", kv_bytes(src, w.seq_q), "bytes")]
        up = TrainConfig(steps=o["uptrain_steps"], lr=o["uptrain_lr"], weight_decay=o["weight_decay"],
                         warmup=o["uptrain_steps"] // 10, schedule_steps=o["uptrain_steps"], wall_cap_s=o["wall_cap_s"])
        truncated = res.truncated
        for b in o["budgets"]:
            n = max(1, round(b * w.heads_q))
            for how in CONVERSIONS:
                if how == "gqa" and w.heads_q % n:
                    continue
                tag = f"{how}_kv{round(100 * b):d}"
                model = convert_model(src, how, n, n, backend=rc.backend)
                acc0 = accuracy(model)
                if o["uptrain_steps"]:
                    seed_all(seed)
                    ur = train(model, lambda s: batch_fn(o["steps"] + s), token_loss, up)
                    truncated = truncated or ur.truncated
                acc = accuracy(model)
                rows += [Row(f"kvc_{t}_acc_{tag}", acc, "fraction", n=len(x_te)),
                         Row(f"kvc_{t}_retained_{tag}", acc / max(acc_src, 1e-9), "ratio"),
                         Row(f"kvc_{t}_retained0_{tag}", acc0 / max(acc_src, 1e-9), "ratio"),
                         Row(f"kvc_{t}_kv_bytes_{tag}", kv_bytes(model, w.seq_q), "bytes")]
        rows += [r for r in res.rows() if r.metric != "truncated"]
        return rows + [Row("truncated", float(truncated), "bool")]
