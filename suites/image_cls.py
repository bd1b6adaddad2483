"""Image classification with a small ViT where only the attention changes.

Patch embedding + learned positions → pre-LN blocks (attention + MLP) → LN → mean pool → linear
head (mean pooling rather than a CLS token, so 2-D methods get exactly the patch grid; the same
for every method). Methods whose reference takes a `spatial` grid and that declare 2-D support
get the patch grid; others see the row-major patch sequence.

Data (`dataset`): `fashion-mnist` (Debian's `dataset-fashion-mnist`, read from the IDX gz files:
a stratified `n_train` subset, the full 10k test set), `digits` (scikit-learn's 8×8 digits, fixed
stratified 70/30 split), `auto` (Fashion-MNIST when installed, else digits with the `digits_*`
settings) or `imagefolder` (`data_root` with `train/<class>/` and `val/` or `validation/`, read
with PIL — `pip install pillow`; random crop + flip, Mixup/CutMix, label smoothing, warm-up +
cosine; not included: RandAugment, random erasing, drop-path).

Rows: top1 (and top5 with ≥ 100 classes), params (model parameter count), flops_per_image
(forward FLOPs at the training resolution, FlopCounterMode; absent where it cannot count),
steps, wall_s, truncated, train_loss.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from attnbench.flops import counted_flops
from attnbench.metrics import higher, info
from attnbench.proxy import data as proxydata
from attnbench.proxy.suite import ProxySettings, ProxySuite, accepts_spatial, model_config, options
from attnbench.proxy.train import ProxyModel, TrainConfig, data_rng, predict, seed_all, train
from attnbench.registry import MethodEntry, register_suite
from attnbench.settings import SettingsError, settings
from attnbench.spec import Status, Workload
from attnbench.suite import ResolvedCase, Row, status_row


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


SMOKE = ImageSettings()
TIERS: dict[str, ImageSettings] = {
    "smoke": SMOKE,
    "quick": dataclasses.replace(SMOKE, n_train=20_000, epochs=10, wall_cap_s=900.0),
    # DeiT-Tiny shape from scratch on an ImageFolder tree (Imagenette 160 px; ImageNet-100: 224 px, 300 ep)
    "full": dataclasses.replace(SMOKE, dataset="imagefolder", image_size=160, patch=16, epochs=200, d_model=192,
                                n_layers=12, n_heads=3, lr=5e-4 * 256 / 512, batch_size=256, warmup_frac=0.025,
                                shift=0, mixup=0.8, cutmix=1.0, num_workers=8, wall_cap_s=86_400.0),
}
OPTION_KEYS = ("dataset", "data_root", "image_size", "n_train", "patch", "epochs", "n_layers", "lr", "weight_decay",
               "batch_size", "warmup_frac", "label_smoothing", "shift", "mixup", "cutmix", "num_workers",
               "wall_cap_s")


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


class ViT(nn.Module):
    """Patchify → the shared proxy skeleton on patch vectors → mean over tokens (logits)."""

    def __init__(self, body: ProxyModel, patch: int) -> None:
        super().__init__()
        self.body, self.patch = body, patch

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(proxydata.patchify(images, self.patch)).mean(1)

    def aux_loss(self) -> torch.Tensor | None:
        return self.body.aux_loss()


@register_suite
class ImageCls(ProxySuite):
    name = "image_cls"
    version = 1
    metrics = (
        higher("top1", label="top-1", headline=True),
        higher("top5", label="top-5"),
        info("params", "count", label="parameters"),
        info("flops_per_image", "flop", label="FLOPs / image"),
    )
    causal = False
    takes_grid = True
    Settings = ImageSettings
    tiers = TIERS

    def tasks(self, s: ImageSettings, entry: MethodEntry, device: str) -> list[tuple[Workload, dict[str, Any]]]:
        s = resolve_dataset(s)
        grid = (s.image_size // s.patch,) * 2
        caps = entry.spec.capabilities
        spatial = grid if 2 in caps.dims and accepts_spatial(entry) else None
        n = grid[0] * grid[1]
        w = Workload(batch=s.batch_size, heads_q=s.n_heads, heads_kv=s.n_heads, seq_q=n, seq_kv=n,
                     head_dim=s.d_model // s.n_heads, causal=False, mode="fwd_bwd", device=device, spatial=spatial)
        return [(w, options(s, OPTION_KEYS))]

    def run(self, rc: ResolvedCase) -> list[Row]:
        o, seed, chunk = rc.options, rc.seed, rc.case.workload.batch
        dev = torch.device(rc.case.workload.device)
        gen = torch.Generator().manual_seed(seed)
        try:
            if o["dataset"] == "imagefolder":
                batch_fn, steps_per_epoch, test, classes = self._folder(o, gen)
            else:
                batch_fn, steps_per_epoch, test, classes = self._arrays(o, seed, gen)
        except (ImportError, FileNotFoundError) as exc:  # an optional data source that is not installed
            return [status_row(Status.SKIPPED, f"{o['dataset']} data unavailable here ({exc})")]
        seed_all(seed)
        chans = 3 if o["dataset"] == "imagefolder" else 1
        cfg = model_config(rc, in_dim=o["patch"] ** 2 * chans, out_dim=len(classes), n_layers=o["n_layers"],
                           mlp=True, pos="learned", max_len=rc.case.workload.seq_q)
        model = ViT(ProxyModel(cfg), o["patch"]).to(dev)
        mix = _MixCut(o["mixup"], o["cutmix"], len(classes), o["label_smoothing"], gen)

        def loss_fn(m: ViT, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            x, soft = mix(batch[0].to(dev), batch[1].to(dev))
            return torch.sum(-soft * torch.log_softmax(m(x).float(), -1), -1).mean()

        def top_k(m: ViT) -> tuple[float, float]:
            hits1 = hits5 = n = 0
            for x, y in test():
                logits = predict(m, x.to(dev), chunk)
                top = logits.topk(min(5, logits.shape[-1]), -1).indices.cpu()
                hits1 += int((top[:, 0] == y).sum())
                hits5 += int((top == y[:, None]).any(-1).sum())
                n += len(y)
            return hits1 / n, hits5 / n

        steps = o["epochs"] * steps_per_epoch
        tc = TrainConfig(steps=steps, lr=o["lr"], weight_decay=o["weight_decay"],
                         warmup=int(o["warmup_frac"] * steps), schedule_steps=steps,
                         wall_cap_s=o["wall_cap_s"])
        res = train(model, batch_fn, loss_fn, tc)  # type: ignore[arg-type]
        with torch.no_grad():
            top1, top5 = top_k(model)
        n_params = float(sum(p.numel() for p in model.parameters()))
        rows = [Row("top1", top1, "fraction"), Row("params", n_params, "count")]
        x0 = next(iter(test()))[0][:chunk].to(dev)
        if len(x0) == chunk:
            with torch.no_grad():
                flops = counted_flops(lambda: model(x0))
            if flops:  # None where an op is not countable (e.g. flex)
                rows.append(Row("flops_per_image", flops / len(x0), "flop"))
        if len(classes) >= 100:
            rows.append(Row("top5", top5, "fraction"))
        return rows + res.rows()

    @staticmethod
    def _arrays(o: dict[str, Any], seed: int, gen: torch.Generator) -> tuple[Any, int, Any, list[str]]:
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

        def test() -> Any:
            return ((x_te[s:s + 1000], y_te[s:s + 1000]) for s in range(0, len(x_te), 1000))

        return batch_fn, per_epoch, test, data.classes

    @staticmethod
    def _folder(o: dict[str, Any], gen: torch.Generator) -> tuple[Any, int, Any, list[str]]:
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

        def test() -> Any:
            val = proxydata.FolderDataset(val_items, size, False)
            return iter(torch.utils.data.DataLoader(val, batch_size=bs, num_workers=o["num_workers"]))

        return batch_fn, len(loader), test, classes
