"""Multiple-instance bag classification: bags of images whose label is the presence of a target class.

Each bag holds `bag_size` images (Fashion-MNIST, or scikit-learn's digits when it is not installed);
a positive bag holds 1..`max_positives` images of `target_class`, a negative bag none. Only the bag
label is trained on (a fixed, small set of training bags, as in whole-slide MIL), from raw pixels:
a shared instance encoder (MLP) → the method's bag pooling → linear bag classifier.

Pooling: a layer method that is a bag pool (its builder takes `n_classes`, e.g. `acmil`) pools the
instances itself and its token mean is the bag feature; a functional method pools with one learned
query token attending to the instances (the official ACMIL repo's `MHA` baseline), so `mha` is
attention-MIL pooling with plain attention. A pool that exposes `branch_logits` gets each branch's
cross-entropy added to the loss (ACMIL's per-branch classifiers; `aux_loss` too).

Rows: bag_acc, bag_auc (test bags), loc_top1 (positive test bags whose most-attended instance is a
target image), inst_auc (instance-level AUC of the attention weights inside positive bags),
top_mass (mean weight on the most-attended instance), params, steps, wall_s, truncated, train_loss.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from attnbench.layers import build_layer
from attnbench.metrics import higher, info
from attnbench.proxy import data as proxydata
from attnbench.proxy.suite import ProxySettings, ProxySuite, options
from attnbench.proxy.train import TrainConfig, data_rng, seed_all, train
from attnbench.registry import MethodEntry, register_suite
from attnbench.settings import Positive, Seconds, settings
from attnbench.spec import Backend, Status, Workload
from attnbench.suite import ResolvedCase, Row, status_row


@settings
class MILSettings(ProxySettings):
    """`[suite.mil]`: bags, their composition and the training budget."""

    dataset: Literal["auto", "fashion-mnist", "digits"] = "auto"
    target_class: int = 2  # pullover (digits: "2"): confusable with coat and shirt
    bag_size: Positive = 16
    max_positives: int = 2
    n_train_bags: Positive = 300
    n_test_bags: Positive = 400
    epochs: Positive = 25
    batch_size: Positive = 8
    d_model: Positive = 64
    n_heads: Positive = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    wall_cap_s: Seconds = 300.0


SMOKE = MILSettings()
TIERS: dict[str, MILSettings] = {
    "smoke": SMOKE,
    "quick": dataclasses.replace(SMOKE, n_train_bags=600, n_test_bags=1000, epochs=40, wall_cap_s=900.0),
    "full": dataclasses.replace(SMOKE, dataset="fashion-mnist", bag_size=64, max_positives=4, n_train_bags=1000,
                                n_test_bags=2000, epochs=100, d_model=128, n_heads=8, wall_cap_s=7200.0),
}
OPTION_KEYS = ("dataset", "target_class", "bag_size", "max_positives", "n_train_bags", "n_test_bags", "epochs",
               "batch_size", "d_model", "lr", "weight_decay", "wall_cap_s")


def resolve_dataset(s: MILSettings) -> MILSettings:
    if s.dataset == "auto":
        present = (proxydata.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists()
        return dataclasses.replace(s, dataset="fashion-mnist" if present else "digits")
    return s


def is_bag_pool(entry: MethodEntry) -> bool:
    """A layer method pools bags itself when its builder takes `n_classes` (per-branch classifiers)."""
    return entry.spec.kind == "layer" and "n_classes" in entry.spec.defaults


# -- data ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Bags:
    """`items [n, N]` image indices, `labels [n]` (1 = holds a target image), `is_target [n, N]`."""

    items: np.ndarray
    labels: np.ndarray
    is_target: np.ndarray


def make_bags(y: np.ndarray, n_bags: int, size: int, target: int, max_pos: int, rng: np.random.Generator) -> Bags:
    """Half the bags positive with 1..`max_pos` images of class `target`, the rest of other classes."""
    if not 1 <= max_pos <= size:
        raise ValueError(f"max_positives={max_pos} must be in 1..bag_size={size}")
    tgt, other = np.flatnonzero(y == target), np.flatnonzero(y != target)
    if len(tgt) == 0:
        raise ValueError(f"target_class={target} has no images")
    labels = (np.arange(n_bags) % 2).astype(np.int64)
    rng.shuffle(labels)
    n_pos = np.where(labels == 1, rng.integers(1, max_pos + 1, n_bags), 0)
    items = np.empty((n_bags, size), dtype=np.int64)
    is_target = np.zeros((n_bags, size), dtype=bool)
    for i in range(n_bags):
        k = int(n_pos[i])
        bag = np.concatenate([rng.choice(tgt, k, replace=False), rng.choice(other, size - k, replace=False)])
        perm = rng.permutation(size)
        items[i] = bag[perm]
        is_target[i] = perm < k
    return Bags(items, labels, is_target)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney, ties at half); NaN when one class is absent."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    s = scores[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# -- model --------------------------------------------------------------------------------------
class QueryPool(nn.Module):
    """One learned query token attends to the instances through a functional method (`[B, 1, C]`).

    `bag_weights [B, N]` (evaluation only): the method's attention row, read by running the same
    call on one-hot values (exact for any method whose output is its weights times V)."""

    def __init__(self, entry: MethodEntry, backend: Backend, d: int, heads: int, params: dict[str, Any]) -> None:
        super().__init__()
        self.impl, self.params, self.heads = entry.impl(backend), dict(params), heads
        self.query = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.q, self.k, self.v, self.out = (nn.Linear(d, d) for _ in range(4))
        self.bag_weights: torch.Tensor | None = None

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, c = t.shape
        return t.view(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self._split(self.q(self.query).expand(b, 1, -1)), self._split(self.k(x)), self._split(self.v(x))
        o = self.impl.prepare(q, k, v, causal=False, params=self.params)(q, k, v)
        if not self.training:
            with torch.no_grad():
                eye = torch.eye(n, dtype=v.dtype, device=v.device).expand(b, self.heads, n, n)
                probe = self.impl.prepare(q, k, eye, causal=False, params=self.params)(q, k, eye)
                self.bag_weights = probe.mean(1)[:, 0]
        return self.out(o.transpose(1, 2).reshape(b, 1, -1))


class MILModel(nn.Module):
    """Instance encoder (MLP on pixels) → bag pool → linear bag classifier (2 classes)."""

    def __init__(self, entry: MethodEntry, backend: Backend, in_dim: int, d: int, heads: int,
                 params: dict[str, Any]) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(in_dim, d), nn.ReLU(), nn.Linear(d, d), nn.ReLU())
        if is_bag_pool(entry):
            self.pool = build_layer(entry.name, backend, d, heads, params={**params, "n_classes": 2})
        else:
            self.pool = QueryPool(entry, backend, d, heads, params)
        self.head = nn.Linear(d, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x [B, N, pixels]` → bag logits `[B, 2]`."""
        return self.head(self.pool(self.encoder(x)).mean(1))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Bag CE, plus the mean CE of per-branch classifiers where the pool has more than one."""
        loss = nn.functional.cross_entropy(self(x), y)
        branches = getattr(self.pool, "branch_logits", None)
        if branches is not None and branches.shape[1] > 1:
            m = branches.shape[1]
            loss = loss + nn.functional.cross_entropy(branches.reshape(-1, 2), y.repeat_interleave(m))
        return loss

    def aux_loss(self) -> torch.Tensor | None:
        return getattr(self.pool, "aux_loss", None)

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor, items: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """P(positive) `[n]` and the pool's instance weights `[n, N]` on the bags `images[items]`
        (`images [M, pixels]`, `items [n, N]`), in chunks of `batch` bags."""
        self.eval()
        dev = next(self.parameters()).device
        probs, weights = [], []
        for s in range(0, len(items), batch):
            xb = images[items[s:s + batch]].to(dev)
            probs.append(torch.softmax(self(xb).float(), -1)[:, 1])
            weights.append(self.pool.bag_weights.float())
        return torch.cat(probs).cpu().numpy(), torch.cat(weights).cpu().numpy()


@register_suite
class MIL(ProxySuite):
    name = "mil"
    version = 1
    metrics = (
        higher("bag_acc", label="bag accuracy", headline=True),
        higher("bag_auc", label="bag AUC"),
        higher("loc_top1", label="top-attended is a target"),
        higher("inst_auc", label="instance AUC"),
        info("top_mass", "fraction", label="weight on top instance"),
        info("params", "count", label="parameters"),
    )
    causal = False
    Settings = MILSettings
    tiers = TIERS

    def applies_to(self, entry: MethodEntry, backend: Backend) -> str | None:
        why = super().applies_to(entry, backend)
        if why is None and entry.spec.kind == "layer" and not is_bag_pool(entry):
            why = f"mil pools bags; {entry.name} is a token-mixing layer, not a bag pool (no n_classes)"
        return why

    def tasks(self, s: MILSettings, entry: MethodEntry, device: str) -> list[tuple[Workload, dict[str, Any]]]:
        s = resolve_dataset(s)
        n = s.bag_size
        seq_q = n if is_bag_pool(entry) else 1  # a learned query attends to the bag
        w = Workload(batch=s.batch_size, heads_q=s.n_heads, heads_kv=s.n_heads, seq_q=seq_q, seq_kv=n,
                     head_dim=s.d_model // s.n_heads, causal=False, mode="fwd_bwd", device=device)
        return [(w, options(s, OPTION_KEYS))]

    def run(self, rc: ResolvedCase) -> list[Row]:
        o, seed = rc.options, rc.seed
        dev = torch.device(rc.case.workload.device)
        try:
            data = proxydata.fashion_mnist() if o["dataset"] == "fashion-mnist" else proxydata.digits()
        except (ImportError, FileNotFoundError) as exc:
            return [status_row(Status.SKIPPED, f"{o['dataset']} data unavailable here ({exc})")]
        n, bs = o["bag_size"], o["batch_size"]
        tr = make_bags(data.y_train, o["n_train_bags"], n, o["target_class"], o["max_positives"], data_rng(seed, 0))
        te = make_bags(data.y_test, o["n_test_bags"], n, o["target_class"], o["max_positives"], data_rng(seed, 1))
        x_tr = torch.from_numpy(data.x_train.reshape(len(data.x_train), -1))
        x_te = torch.from_numpy(data.x_test.reshape(len(data.x_test), -1))
        seed_all(seed)
        w = rc.workload
        model = MILModel(rc.entry, rc.backend, x_tr.shape[1], w.d_model, w.heads_q, rc.params).to(dev)
        gen = torch.Generator().manual_seed(seed)
        per_epoch = max(1, len(tr.labels) // bs)
        order: dict[int, torch.Tensor] = {}

        def batch_fn(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            epoch, i = divmod(step, per_epoch)
            if epoch not in order:
                order.clear()
                order[epoch] = torch.randperm(len(tr.labels), generator=gen)
            idx = order[epoch][i * bs:(i + 1) * bs].numpy()
            return x_tr[tr.items[idx]], torch.from_numpy(tr.labels[idx])

        def loss_fn(m: MILModel, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            return m.loss(batch[0].to(dev), batch[1].to(dev))

        steps = o["epochs"] * per_epoch
        tc = TrainConfig(steps=steps, lr=o["lr"], weight_decay=o["weight_decay"], schedule_steps=steps,
                         warmup=per_epoch, wall_cap_s=o["wall_cap_s"])
        res = train(model, batch_fn, loss_fn, tc)  # type: ignore[arg-type]
        probs, weights = model.evaluate(x_te, te.items, bs)
        pos = te.labels == 1
        top = weights.argmax(-1)
        rows = [
            Row("bag_acc", float(((probs > 0.5) == pos).mean()), "fraction"),
            Row("bag_auc", auc(probs, pos), "fraction"),
            Row("loc_top1", float(te.is_target[pos, top[pos]].mean()), "fraction"),
            Row("inst_auc", auc(weights[pos].ravel(), te.is_target[pos].ravel()), "fraction"),
            Row("top_mass", float(weights.max(-1).mean()), "fraction"),
            Row("params", float(sum(p.numel() for p in model.parameters())), "count"),
        ]
        return rows + res.rows()

