"""Image classification with a small ViT (or SHViT's macro design) where only the attention changes.

Models (`suites/_image_models.py`): `backbone = "vit"`: patch embedding [+ CLS token] + learned
positions → pre-LN blocks (attention + MLP; model plans and named hybrid layouts apply) → LN →
pool → linear head. `pool = "auto"` uses a CLS token for the methods whose papers read one
(a `cls_token` parameter that is on, e.g. Sparsifiner; DCAL's architecture) and mean pooling for
the others; `cls` / `mean` force one for all. Methods whose reference takes a `spatial` grid and
that declare 2-D support get the patch grid (with a CLS token they run on the patches and the CLS
token reads every token densely); others see the row-major sequence. A layer declaring
`image_branches` (DCAL) trains as its paper's architecture (SA stack + GLCA block on the chained
rollout + training-only PWCA). `backbone = "shvit"`: SHViT's conv stem, stages and downsampling,
no attention in the first stage, the method in every later attention slot (mean pooled).

`objective = "simclr" | "amcl"` pre-trains the same encoder self-supervised on two views (no
labels; AMCL: several projection heads, per-pair adaptive temperatures, `suites/_image_objectives.py`)
and scores it by a linear probe on frozen features (`probe_top1_<objective>`) instead of top-1.
`variants` (overrides of these keys) make one case each.

Data (`dataset`): `fashion-mnist` (Debian's `dataset-fashion-mnist`, read from the IDX gz files:
a stratified `n_train` subset, the full 10k test set), `digits` (scikit-learn's 8×8 digits, fixed
stratified 70/30 split), `auto` (Fashion-MNIST when installed, else digits with the `digits_*`
settings) or `imagefolder` (`data_root` with `train/<class>/` and `val/` or `validation/`, read
with PIL — `pip install pillow`; random crop + flip, Mixup/CutMix, label smoothing, warm-up +
cosine; not included: RandAugment, random erasing, drop-path).

Rows: top1 (and top5 with ≥ 100 classes) or probe_top1_<objective>, params (model parameter
count, projection heads excluded), flops_per_image (forward FLOPs at the training resolution,
FlopCounterMode; absent where it cannot count), steps, wall_s, truncated, train_loss.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from attnbench import density
from attnbench.flops import counted_flops
from attnbench.metrics import higher, info
from attnbench.proxy import data as proxydata
from attnbench.proxy.suite import (
    EFFECTIVE_DENSITY,
    ProxySettings,
    ProxySuite,
    accepts_spatial,
    density_row,
    expand_variants,
    options,
)
from attnbench.proxy.train import TrainConfig, data_rng, predict, seed_all, train
from attnbench.registry import MethodEntry, register_suite
from attnbench.settings import SettingsError, settings
from attnbench.spec import Status, Workload
from attnbench.suite import ResolvedCase, Row, status_row
from attnbench.suites._image_models import ImageModelConfig, ImageViT, SHViTNet, shvit_grids
from attnbench.suites._image_objectives import linear_probe, objective_for, two_views


@settings
class ImageSettings(ProxySettings):
    """`[suite.image_cls]`; `digits_*` replace patch/epochs when the dataset resolves to digits."""

    dataset: Literal["auto", "fashion-mnist", "digits", "imagefolder"] = "auto"
    data_root: str = ""
    image_size: int = 28
    n_train: int = 10_000  # 0 = the whole training set
    patch: int = 4
    epochs: int = 8
    digits_patch: int = 2
    digits_epochs: int = 100
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    lr: float = 3e-3
    weight_decay: float = 0.05
    batch_size: int = 64
    warmup_frac: float = 0.3
    label_smoothing: float = 0.1
    shift: int = 1
    mixup: float = 0.0
    cutmix: float = 0.0
    num_workers: int = 0
    wall_cap_s: float = 300.0
    pool: Literal["auto", "cls", "mean"] = "auto"
    backbone: Literal["vit", "shvit"] = "vit"
    shvit_depths: tuple[int, ...] = (1, 2)  # blocks per SHViT stage; the first has no attention
    shvit_stem: int = 2  # total stride of the SHViT conv stem (paper: 16); 28 px → 14×14, then 7×7
    layers: tuple[str, ...] | None = None  # model plan: per-layer methods (vit backbone)
    objective: Literal["supervised", "simclr", "amcl"] = "supervised"
    amcl_heads: int = 4
    probe_steps: int = 300
    variants: tuple[dict[str, Any], ...] = ()


SMOKE = ImageSettings()
TIERS: dict[str, ImageSettings] = {
    "smoke": SMOKE,
    "quick": dataclasses.replace(SMOKE, n_train=20_000, epochs=10, wall_cap_s=900.0),
    # DeiT-Tiny shape from scratch on an ImageFolder tree (Imagenette 160 px; ImageNet-100: 224 px, 300 ep)
    "full": dataclasses.replace(SMOKE, dataset="imagefolder", image_size=160, patch=16, epochs=200, d_model=192,
                                n_layers=12, n_heads=3, lr=5e-4 * 256 / 512, batch_size=256, warmup_frac=0.025,
                                shift=0, mixup=0.8, cutmix=1.0, num_workers=8, wall_cap_s=86_400.0,
                                shvit_depths=(2, 4, 5), shvit_stem=16),
}
OPTION_KEYS = ("dataset", "data_root", "image_size", "n_train", "patch", "epochs", "n_layers", "lr", "weight_decay",
               "batch_size", "warmup_frac", "label_smoothing", "shift", "mixup", "cutmix", "num_workers",
               "wall_cap_s", "backbone", "objective")
# options recorded only where they apply
EXTRA_KEYS = {"shvit_depths": ("backbone", "shvit"), "shvit_stem": ("backbone", "shvit"),
              "amcl_heads": ("objective", "amcl"), "probe_steps": ("objective", "simclr|amcl")}


def resolve_dataset(s: ImageSettings) -> ImageSettings:
    """Settings with `dataset = auto` resolved (digits fallback switches to the digits patch/epochs)."""
    if s.dataset == "auto":
        present = (proxydata.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists()
        s = dataclasses.replace(s, dataset="fashion-mnist" if present else "digits")
    if s.dataset == "digits":
        return dataclasses.replace(s, patch=s.digits_patch, epochs=s.digits_epochs, image_size=8)
    if s.dataset == "fashion-mnist":
        return dataclasses.replace(s, image_size=28)
    if not s.data_root:
        raise SettingsError("suite.image_cls: dataset = imagefolder needs data_root (train/<class>/, val/<class>/)")
    return s


class _MixCut:
    """Mixup (α) / CutMix (α) on a batch `[B, H, W, C]`, half the batches each when both are on."""

    def __init__(self, mixup: float, cutmix: float, n_classes: int, smoothing: float, gen: torch.Generator):
        self.mixup, self.cutmix, self.n, self.smoothing, self.gen = mixup, cutmix, n_classes, smoothing, gen

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        soft = nn.functional.one_hot(y, self.n).float() * (1 - self.smoothing) + self.smoothing / self.n
        if not (self.mixup or self.cutmix):
            return x, soft
        use_cut = self.cutmix > 0 and (self.mixup == 0 or torch.rand((), generator=self.gen) < 0.5)
        alpha = self.cutmix if use_cut else self.mixup
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        perm = torch.randperm(len(x), generator=self.gen).to(x.device)
        if use_cut:
            h, w = x.shape[1:3]
            ch, cw = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
            cy = int(torch.randint(0, h, (), generator=self.gen))
            cx = int(torch.randint(0, w, (), generator=self.gen))
            y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
            x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
            x = x.clone()
            x[:, y0:y1, x0:x1] = x[perm, y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
        else:
            x = lam * x + (1 - lam) * x[perm]
        return x, lam * soft + (1 - lam) * soft[perm]


def image_layout(s: ImageSettings, entry: MethodEntry) -> dict[str, Any]:
    """How the method sits in the model: pool, the grid its attention runs on, whether it takes that
    grid (2-D methods) or a 1-D token count, and the layer's `image_branches` (DCAL)."""
    branches = tuple(getattr(entry.reference.fn, "image_branches", ()))
    params = entry.spec.params(s.params.get(entry.name, {}))
    own_cls = bool(branches) or params.get("cls_token") is True
    stem = (s.image_size // (s.shvit_stem if s.backbone == "shvit" else s.patch),) * 2
    if s.backbone == "shvit":
        pool, grid = "mean", shvit_grids(stem, s.shvit_depths)[1]
    else:
        pool, grid = ("cls" if own_cls else "mean") if s.pool == "auto" else s.pool, stem
    takes_grid = 2 in entry.spec.capabilities.dims and accepts_spatial(entry) and not (pool == "cls" and own_cls)
    count = pool == "cls" and own_cls and accepts_spatial(entry) and not takes_grid
    n = grid[0] * grid[1] + (pool == "cls" and not takes_grid)
    return {"pool": pool, "grid": grid, "stem": stem, "n": n, "branches": branches,
            "spatial": grid if takes_grid else (n,) if count else None}


@register_suite
class ImageCls(ProxySuite):
    name = "image_cls"
    version = 2  # 2: CLS token where the paper reads one, DCAL architecture, agents scaled to the grid
    metrics = (
        higher("top1", label="top-1", headline=True),
        higher("top5", label="top-5"),
        higher("probe_top1_*", label="linear-probe top-1 (self-supervised objective)"),
        info("params", "count", label="parameters"),
        info("flops_per_image", "flop", label="FLOPs / image"),
        EFFECTIVE_DENSITY,
    )
    causal = False
    takes_grid = True
    Settings = ImageSettings
    tiers = TIERS

    def tasks(self, s: ImageSettings, entry: MethodEntry, device: str) -> list[tuple[Workload, dict[str, Any]]]:
        out = []
        for v in expand_variants(s, f"suite.{self.name}"):
            v = resolve_dataset(v)
            lay = image_layout(v, entry)
            w = Workload(batch=v.batch_size, heads_q=v.n_heads, heads_kv=v.n_heads, seq_q=lay["n"], seq_kv=lay["n"],
                         head_dim=v.d_model // v.n_heads, causal=False, mode="fwd_bwd", device=device,
                         spatial=lay["spatial"])
            opts = {**options(v, OPTION_KEYS), "pool": lay["pool"]}
            for key, (when, values) in EXTRA_KEYS.items():
                if opts[when] in values.split("|"):
                    opts[key] = getattr(v, key)
            if v.layers is not None:
                opts["layers"] = list(v.layers)
            out.append((w, opts))
        return out

    def run(self, rc: ResolvedCase) -> list[Row]:
        o, seed, chunk = rc.options, rc.seed, rc.case.workload.batch
        dev = torch.device(rc.case.workload.device)
        gen = torch.Generator().manual_seed(seed)
        branches = tuple(getattr(rc.entry.reference.fn, "image_branches", ()))
        if o["backbone"] == "shvit" and branches:
            return [status_row(Status.SKIPPED, f"{rc.method}'s architecture is a CLS-token ViT; the shvit "
                                               "backbone has no CLS token")]
        try:
            data = self._folder(o, gen) if o["dataset"] == "imagefolder" else self._arrays(o, seed, gen)
        except (ImportError, FileNotFoundError) as exc:  # an optional data source that is not installed
            return [status_row(Status.SKIPPED, f"{o['dataset']} data unavailable here ({exc})")]
        batch_fn, steps_per_epoch, test, train_plain, classes = data
        seed_all(seed)
        w, spatial = rc.workload, rc.case.workload.spatial
        cfg = ImageModelConfig(method=rc.method, n_classes=len(classes), backend=rc.backend, params=dict(rc.params),
                               d_model=w.d_model, n_heads=w.heads_q, kv_heads=w.heads_kv, n_layers=o["n_layers"],
                               patch=o.get("shvit_stem", o["patch"]), chans=3 if o["dataset"] == "imagefolder" else 1,
                               grid=(o["image_size"] // o.get("shvit_stem", o["patch"]),) * 2, pool=o["pool"],
                               takes_grid=spatial is not None and len(spatial) == 2,
                               count_spatial=spatial is not None and len(spatial) == 1, branches=branches,
                               shvit_depths=tuple(o.get("shvit_depths", (1, 2))),
                               layers=tuple(o["layers"]) if o.get("layers") else None)
        model: Any = (SHViTNet(cfg) if o["backbone"] == "shvit" else ImageViT(cfg, gen)).to(dev)
        n_params = float(sum(p.numel() for p in model.parameters()))
        steps = o["epochs"] * steps_per_epoch
        tc = TrainConfig(steps=steps, lr=o["lr"], weight_decay=o["weight_decay"],
                         warmup=int(o["warmup_frac"] * steps), schedule_steps=steps,
                         wall_cap_s=o["wall_cap_s"])
        if o["objective"] != "supervised":
            rows = self._self_supervised(rc, model, batch_fn, test, train_plain, len(classes), tc, gen)
        else:
            rows = self._supervised(rc, model, batch_fn, test, classes, tc, gen)
        rows.insert(1, Row("params", n_params, "count"))
        x0 = next(iter(test()))[0][:chunk].to(dev)
        if len(x0) == chunk:
            with torch.no_grad():
                flops = counted_flops(lambda: model(x0))
            if flops:  # None where an op is not countable (e.g. flex)
                rows.append(Row("flops_per_image", flops / len(x0), "flop"))
        return rows

    @staticmethod
    def _supervised(rc: ResolvedCase, model: Any, batch_fn: Any, test: Any, classes: list[str], tc: TrainConfig,
                    gen: torch.Generator) -> list[Row]:
        o, chunk, dev = rc.options, rc.case.workload.batch, torch.device(rc.case.workload.device)
        mix = _MixCut(o["mixup"], o["cutmix"], len(classes), o["label_smoothing"], gen)

        def soft_ce(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
            return torch.sum(-soft * torch.log_softmax(logits.float(), -1), -1).mean()

        def loss_fn(m: Any, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            x, soft = mix(batch[0].to(dev), batch[1].to(dev))
            return m.train_loss(x, soft, soft_ce)

        def top_k(m: Any) -> tuple[float, float]:
            hits1 = hits5 = n = 0
            for x, y in test():
                logits = predict(m, x.to(dev), chunk)
                top = logits.topk(min(5, logits.shape[-1]), -1).indices.cpu()
                hits1 += int((top[:, 0] == y).sum())
                hits5 += int((top == y[:, None]).any(-1).sum())
                n += len(y)
            return hits1 / n, hits5 / n

        res = train(model, batch_fn, loss_fn, tc)
        with torch.no_grad(), density.measure() as meter:
            top1, top5 = top_k(model)
        rows = [Row("top1", top1, "fraction"), *density_row(meter)]
        if len(classes) >= 100:
            rows.append(Row("top5", top5, "fraction"))
        return rows + res.rows()

    @staticmethod
    def _self_supervised(rc: ResolvedCase, model: Any, batch_fn: Any, test: Any, train_plain: Any, n_classes: int,
                         tc: TrainConfig, gen: torch.Generator) -> list[Row]:
        o, chunk, dev = rc.options, rc.case.workload.batch, torch.device(rc.case.workload.device)
        model.objective = objective_for(o["objective"], rc.workload.d_model, o.get("amcl_heads", 1)).to(dev)

        def loss_fn(m: Any, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            v1, v2 = two_views(batch[0].to(dev), o["shift"], gen)
            return m.objective(m.features(v1), m.features(v2))

        class _Features(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.m = model

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.m.features(x)

        def feats(batches: Any) -> tuple[torch.Tensor, torch.Tensor]:
            fs, ys = zip(*((predict(_Features(), x.to(dev), chunk).float().cpu(), y) for x, y in batches), strict=True)
            return torch.cat(fs), torch.cat(ys)

        res = train(model, batch_fn, loss_fn, tc)
        with torch.no_grad(), density.measure() as meter:
            f_te, y_te = feats(test())
        with torch.no_grad():
            f_tr, y_tr = feats(train_plain())
        acc = linear_probe(f_tr, y_tr, f_te, y_te, n_classes, steps=o["probe_steps"])
        del model.objective
        return [Row(f"probe_top1_{o['objective']}", acc, "fraction"), *density_row(meter), *res.rows()]

    @staticmethod
    def _arrays(o: dict[str, Any], seed: int, gen: torch.Generator) -> tuple[Any, int, Any, Any, list[str]]:
        data = proxydata.fashion_mnist() if o["dataset"] == "fashion-mnist" else proxydata.digits()
        x_tr, y_tr = data.x_train, data.y_train
        if o["n_train"] and o["n_train"] < len(y_tr):
            idx = proxydata.stratified_subset(y_tr, o["n_train"], data_rng(seed, 0))
            x_tr, y_tr = x_tr[idx], y_tr[idx]
        x_tr, y_tr = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
        x_te, y_te = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
        bs = o["batch_size"]
        per_epoch = len(x_tr) // bs
        perm: dict[int, torch.Tensor] = {}

        def batch_fn(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            epoch, i = divmod(step, per_epoch)
            if epoch not in perm:
                perm.clear()
                perm[epoch] = torch.randperm(len(x_tr), generator=gen)
            idx = perm[epoch][i * bs:(i + 1) * bs]
            return proxydata.random_shift(x_tr[idx], o["shift"], gen), y_tr[idx]

        def chunks(x: torch.Tensor, y: torch.Tensor) -> Any:
            return ((x[s:s + 1000], y[s:s + 1000]) for s in range(0, len(x), 1000))

        return batch_fn, per_epoch, lambda: chunks(x_te, y_te), lambda: chunks(x_tr, y_tr), data.classes

    @staticmethod
    def _folder(o: dict[str, Any], gen: torch.Generator) -> tuple[Any, int, Any, Any, list[str]]:
        train_items, val_items, classes = proxydata.image_folder(Path(o["data_root"]))
        size, bs = o["image_size"], o["batch_size"]
        loader = torch.utils.data.DataLoader(proxydata.FolderDataset(train_items, size, True), batch_size=bs,
                                             shuffle=True, drop_last=True, num_workers=o["num_workers"],
                                             generator=gen, persistent_workers=o["num_workers"] > 0)
        it = iter(loader)

        def batch_fn(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            nonlocal it
            try:
                return next(it)
            except StopIteration:
                it = iter(loader)
                return next(it)

        def plain(items: list[tuple[Path, int]]) -> Any:
            ds = proxydata.FolderDataset(items, size, False)
            return lambda: iter(torch.utils.data.DataLoader(ds, batch_size=bs, num_workers=o["num_workers"]))

        return batch_fn, len(loader), plain(val_items), plain(train_items), classes
