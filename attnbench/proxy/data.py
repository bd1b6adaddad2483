"""Synthetic and offline data for the accuracy proxies, generated from `numpy.random.Generator`.

MQAR (Zoology's multi-query associative recall), NIAH passkey sequences, in-context linear
regression prompts with closed-form baselines, and small image sets (Fashion-MNIST from Debian's
`dataset-fashion-mnist`, scikit-learn's digits, or an ImageFolder tree read with PIL).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

IGNORE = -100  # label of unscored positions


# -- MQAR -------------------------------------------------------------------------------------
def _distinct(rng: np.random.Generator, n: int, lo: int, hi: int, k: int, chunk: int = 4096) -> np.ndarray:
    """`[n, k]` ids drawn without replacement from [lo, hi) per row."""
    out = np.empty((n, k), dtype=np.int64)
    for s in range(0, n, chunk):
        r = rng.random((min(chunk, n - s), hi - lo))
        out[s:s + len(r)] = np.argpartition(r, k - 1, axis=1)[:, :k] + lo
    return out


def mqar(rng: np.random.Generator, n: int, vocab: int, seq_len: int, kv_pairs: int, power_a: float = 0.01,
         random_non_queries: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Zoology's MQAR: `key₁ val₁ … key_K val_K` then every key queried once at an even offset.

    Keys come from [1, V/2), values from [V/2, V); query gaps g are drawn without replacement with
    p(g) ∝ a·(g+1)^(a−1). Only the query-key positions are scored (target = its value).
    Returns:
        inputs `[n, L]` int64, labels `[n, L]` int64 (IGNORE except at the K query positions).
    """
    k = kv_pairs
    if seq_len % 2 or vocab <= seq_len or 4 * k > seq_len:
        raise ValueError(f"MQAR needs even L, V > L and 4K <= L (V={vocab}, L={seq_len}, K={k})")
    keys = _distinct(rng, n, 1, vocab // 2, k)
    values = _distinct(rng, n, vocab // 2, vocab, k)
    ctx = 2 * k
    space = (seq_len - ctx) // 2
    p = power_a * np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1)
    # weighted sampling without replacement = top-k of log p + Gumbel noise
    gaps = np.argsort(-(np.log(p / p.sum())[None, :] + rng.gumbel(size=(n, space))), axis=1)[:, :k]
    inputs = np.zeros((n, seq_len), dtype=np.int64)
    inputs[:, 0:ctx:2], inputs[:, 1:ctx:2] = keys, values
    rows = np.arange(n)[:, None]
    inputs[rows, ctx + 2 * gaps] = keys
    labels = np.full((n, seq_len), IGNORE, dtype=np.int64)
    labels[rows, ctx + 2 * gaps] = values
    if random_non_queries:
        fill = rng.integers(0, vocab, size=inputs.shape)
        inputs = np.where(inputs == 0, fill, inputs)
    return inputs, labels


# -- NIAH -------------------------------------------------------------------------------------
NEEDLE, QUERY, FIRST_FILLER = 10, 11, 12  # digits are tokens 0..9


def niah_vocab(n_filler: int, n_keys: int = 0) -> int:
    """Digits, NEEDLE, QUERY, `n_filler` filler tokens, then `n_keys` key tokens (keyed needles)."""
    return FIRST_FILLER + n_filler + n_keys


def _haystack(rng: np.random.Generator, n: int, length: int, n_filler: int, haystack: str) -> np.ndarray:
    if haystack == "noise":
        return FIRST_FILLER + rng.integers(0, n_filler, size=(n, length))
    if haystack == "periodic":
        return FIRST_FILLER + (rng.integers(0, n_filler, size=(n, 1)) + np.arange(length)[None, :]) % n_filler
    raise ValueError(f"unknown haystack {haystack!r}; valid: noise, periodic")


def niah(rng: np.random.Generator, n: int, seq_len: int, depths: np.ndarray | float | None = None,
         digits: int = 3, n_filler: int = 64, haystack: str = "noise", needles: int = 1, values: int = 1,
         queries: int = 1, n_keys: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Passkey sequences: filler, `NEEDLE d₁…d_k` at depth δ, and `QUERY d₁…d_k` at the end.

    The needle starts at round(δ·(L−2k−2)); δ ~ U[0, 1] when `depths` is None. Haystack "noise"
    draws filler tokens uniformly; "periodic" repeats the filler alphabet from a random offset.
    More than one needle, value or query gives RULER's keyed variants (see `niah_keyed`).
    Returns:
        inputs `[n, L]`, labels `[n, L]`: the k digit predictions (teacher-forced) are scored.
    """
    if (needles, values, queries) != (1, 1, 1):
        return niah_keyed(rng, n, seq_len, depths, digits, n_filler, haystack, needles, values, queries, n_keys)
    k, L = digits, seq_len
    if L < 2 * k + 2:
        raise ValueError(f"NIAH needs L >= 2k+2, got L={L}, k={k}")
    inputs = _haystack(rng, n, L, n_filler, haystack)
    d = rng.random(n) if depths is None else np.broadcast_to(np.asarray(depths, dtype=np.float64), (n,))
    start = np.rint(d * (L - 2 * k - 2)).astype(np.int64)
    key = rng.integers(0, 10, size=(n, k))
    rows = np.arange(n)[:, None]
    inputs[np.arange(n), start] = NEEDLE
    inputs[rows, start[:, None] + 1 + np.arange(k)] = key
    inputs[:, L - k - 1] = QUERY
    inputs[:, L - k:] = key
    labels = np.full((n, L), IGNORE, dtype=np.int64)
    labels[:, L - k - 1:L - 1] = key
    return inputs.astype(np.int64), labels


def _pack(rng: np.random.Generator, count: int, left: int, right: int, block: int,
          right_at: int) -> list[int]:
    """Starts of `count` non-overlapping blocks in `[0, left)` and `[right_at, right_at + right)`,
    uniformly spread (stars and bars on each side); needs floor(left/block) + floor(right/block) >= count."""
    cap_l, cap_r = left // block, right // block
    n_l = int(np.clip(rng.binomial(count, left / max(left + right, 1)), count - cap_r, cap_l))
    out = []
    for n_side, space, base in ((n_l, left, 0), (count - n_l, right, right_at)):
        gaps = np.sort(rng.integers(0, space - n_side * block + 1, size=n_side))
        out += [base + int(g) + i * block for i, g in enumerate(gaps)]
    return out


def niah_keyed(rng: np.random.Generator, n: int, seq_len: int, depths: np.ndarray | float | None,
               digits: int, n_filler: int, haystack: str, needles: int, values: int, queries: int,
               n_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """RULER-style keyed needles: multi-key (`needles` > 1 distractor keys), multi-value
    (`values` needles per key) and multi-query (`queries` keys asked).

    Each needle is `NEEDLE key d₁…d_k` (distinct key tokens per sequence). The end holds, per
    queried key, `QUERY key` followed by all its values in order of appearance; every digit
    prediction there is scored. One needle of the first queried key sits at depth δ of the
    haystack (random when `depths` is None); the others go to random non-overlapping positions.
    """
    k, block = digits, digits + 2
    if not 1 <= queries <= needles <= n_keys:
        raise ValueError(f"keyed NIAH needs 1 <= queries <= needles <= n_keys, got {queries}, {needles}, {n_keys}")
    tail = queries * (2 + values * k)
    hay = seq_len - tail
    m = needles * values
    if hay < (m + 1) * block:
        raise ValueError(f"keyed NIAH: L={seq_len} cannot hold {m} needles of {block} tokens (plus one of slack) "
                         f"and {tail} query tokens")
    inputs = _haystack(rng, n, seq_len, n_filler, haystack)
    labels = np.full((n, seq_len), IGNORE, dtype=np.int64)
    d = rng.random(n) if depths is None else np.broadcast_to(np.asarray(depths, dtype=np.float64), (n,))
    first_key = FIRST_FILLER + n_filler
    for r in range(n):
        keys = first_key + rng.choice(n_keys, size=needles, replace=False)
        vals = rng.integers(0, 10, size=(needles, values, k))
        target = int(np.rint(d[r] * (hay - block)))
        slots = [target, *_pack(rng, m - 1, target, hay - target - block, block, target + block)]
        order = [0, *(1 + rng.permutation(m - 1))]  # needle 0 (key 0, value 0) is the one at depth δ
        starts = np.empty((needles, values), np.int64)
        for i, (a, b) in enumerate(np.ndindex(needles, values)):
            starts[a, b] = slots[order[i]]
        for a, b in np.ndindex(needles, values):
            s = starts[a, b]
            inputs[r, s:s + block] = [NEEDLE, keys[a], *vals[a, b]]
        pos = hay
        for a in range(queries):  # key 0 holds the needle at depth δ
            answer = vals[a][np.argsort(starts[a])].reshape(-1)
            inputs[r, pos:pos + 2 + len(answer)] = [QUERY, keys[a], *answer]
            labels[r, pos + 1:pos + 1 + len(answer)] = answer
            pos += 2 + len(answer)
    return inputs.astype(np.int64), labels


# -- in-context linear regression -------------------------------------------------------------
@dataclass
class RegressionPrompts:
    """`xs [n, k, d]`, `ys [n, k]`, query `xq [n, d]`, `yq [n]` (noisy), true `beta [n, d]`."""

    xs: np.ndarray
    ys: np.ndarray
    xq: np.ndarray
    yq: np.ndarray
    beta: np.ndarray

    def concat_tokens(self) -> np.ndarray:
        """He et al.'s format: `(x_l, y_l)` tokens then `(x_q, 0)`: `[n, k+1, d+1]`."""
        ctx = np.concatenate([self.xs, self.ys[..., None]], axis=-1)
        q = np.concatenate([self.xq, np.zeros_like(self.yq)[:, None]], axis=-1)[:, None]
        return np.concatenate([ctx, q], axis=1).astype(np.float32)

    def interleaved_tokens(self) -> tuple[np.ndarray, np.ndarray]:
        """Garg et al.'s format `x₁, (y₁,0…), x₂, …` `[n, 2k, d]`, and targets `[n, k]` at x slots."""
        n, k, d = self.xs.shape
        ytok = np.zeros_like(self.xs)
        ytok[..., 0] = self.ys
        return np.stack([self.xs, ytok], axis=2).reshape(n, 2 * k, d).astype(np.float32), self.ys


def regression(rng: np.random.Generator, n: int, d: int, k: int, noise_var: float = 0.1,
               beta_var: float | None = None, active_dims: int | None = None) -> RegressionPrompts:
    """x ~ N(0, I_d), β ~ N(0, beta_var·I_d) (default 1/d), y = βᵀx + ε, ε ~ N(0, σ²).

    `active_dims` < d zeroes the other coordinates of every x before y is formed (Garg et al.'s
    curriculum trains on a growing sub-space of the full input dimension).
    """
    bv = 1.0 / d if beta_var is None else beta_var
    beta = rng.normal(0, np.sqrt(bv), size=(n, d))
    xs = rng.normal(size=(n, k, d))
    xq = rng.normal(size=(n, d))
    if active_dims is not None and active_dims < d:
        xs[..., active_dims:] = 0.0
        xq[:, active_dims:] = 0.0
    sd = np.sqrt(noise_var)
    ys = np.einsum("nkd,nd->nk", xs, beta) + sd * rng.normal(size=(n, k))
    yq = np.einsum("nd,nd->n", xq, beta) + sd * rng.normal(size=n)
    return RegressionPrompts(xs, ys, xq, yq, beta)


def curriculum_at(step: int, start: int, end: int, increment: int, every: int) -> int:
    """Garg et al.'s curriculum value at `step`: `start`, raised by `increment` every `every`
    steps, capped at `end`."""
    return min(end, start + increment * (step // every))


def ridge_predict(p: RegressionPrompts, lam: float) -> np.ndarray:
    """x_qᵀ(XᵀX + λI)⁻¹Xᵀy per prompt; λ = 0 gives the min-norm least-squares solution."""
    if lam == 0:
        beta = np.einsum("ndk,nk->nd", np.linalg.pinv(p.xs), p.ys)
    else:
        d = p.xs.shape[-1]
        gram = np.einsum("nkd,nke->nde", p.xs, p.xs) + lam * np.eye(d)
        beta = np.linalg.solve(gram, np.einsum("nkd,nk->nd", p.xs, p.ys)[..., None])[..., 0]
    return np.einsum("nd,nd->n", p.xq, beta)


def gd1_direction(p: RegressionPrompts) -> np.ndarray:
    """x_qᵀ Σ_l y_l x_l: one gradient step from β = 0, before the step size."""
    return np.einsum("nd,nd->n", p.xq, np.einsum("nkd,nk->nd", p.xs, p.ys))


def fit_gd1_step(p: RegressionPrompts) -> float:
    """Best step size η of the one-step-GD predictor on (held-out) prompts `p`."""
    s = gd1_direction(p)
    return float((s * p.yq).sum() / max((s * s).sum(), 1e-12))


def knn_predict(p: RegressionPrompts, neighbours: int = 3) -> np.ndarray:
    """Mean y of the `neighbours` in-context x nearest to x_q (all of them when fewer)."""
    dist = np.linalg.norm(p.xs - p.xq[:, None], axis=-1)
    m = min(neighbours, p.xs.shape[1])
    idx = np.argsort(dist, axis=1, kind="stable")[:, :m]
    return np.take_along_axis(p.ys, idx, axis=1).mean(1)


def icl_baselines(p: RegressionPrompts, noise_var: float, beta_var: float,
                  eta: float) -> dict[str, np.ndarray]:
    """Predictions of the baselines on the prompts the model sees: ols, ridge (Bayes), gd1,
    zero, and Garg et al.'s 3-NN and averaging (x_qᵀ·mean of y_l x_l)."""
    lam = noise_var / beta_var
    k = p.xs.shape[1]
    return {"ols": ridge_predict(p, 0.0), "ridge": ridge_predict(p, lam), "gd1": eta * gd1_direction(p),
            "zero": np.zeros_like(p.yq), "knn3": knn_predict(p, 3), "averaging": gd1_direction(p) / k}


# -- images -----------------------------------------------------------------------------------
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass
class ImageSet:
    """float32 images `[n, H, W, C]` in [0, 1], int64 labels, class names."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    name: str


def _idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=header)


def fashion_mnist(root: Path = FASHION_MNIST_DIR) -> ImageSet:
    """Fashion-MNIST from IDX gz files (16-byte image header, 8-byte label header)."""
    def part(split: str) -> tuple[np.ndarray, np.ndarray]:
        x = _idx(root / f"{split}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28, 1)
        y = _idx(root / f"{split}-labels-idx1-ubyte.gz", 8).astype(np.int64)
        return x.astype(np.float32) / 255.0, y

    xtr, ytr = part("train")
    xte, yte = part("t10k")
    classes = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
    return ImageSet(xtr, ytr, xte, yte, classes, "fashion-mnist")


def digits(test_fraction: float = 0.3, seed: int = 0) -> ImageSet:
    """scikit-learn's bundled 8×8 digits (1 797 images), split stratified with a fixed seed."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    y = data.target.astype(np.int64)
    test = stratified_subset(y, int(round(test_fraction * len(y))), np.random.default_rng(seed))
    mask = np.zeros(len(y), dtype=bool)
    mask[test] = True
    return ImageSet(x[~mask], y[~mask], x[mask], y[mask], [str(i) for i in range(10)], "digits")


def stratified_subset(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of `n` items with class proportions kept (largest remainders)."""
    classes, counts = np.unique(y, return_counts=True)
    quota = counts * n / len(y)
    take = np.floor(quota).astype(int)
    take[np.argsort(-(quota - take))[: n - take.sum()]] += 1
    idx = [rng.choice(np.flatnonzero(y == c), t, replace=False) for c, t in zip(classes, take, strict=True)]
    return np.sort(np.concatenate(idx))


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """`[B, H, W, C]` → `[B, (H/p)·(W/p), p·p·C]`, row-major over the patch grid."""
    b, h, w, c = x.shape
    if h % patch or w % patch:
        raise ValueError(f"image {h}x{w} is not divisible by patch {patch}")
    x = x.reshape(b, h // patch, patch, w // patch, patch, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Shift every image `[B, H, W, C]` by its own offset in [−s, s]² (zero padding)."""
    if max_shift <= 0:
        return x
    b, h, w, _ = x.shape
    s = max_shift
    padded = torch.nn.functional.pad(x, (0, 0, s, s, s, s))
    dy, dx = (torch.randint(0, 2 * s + 1, (2, b), generator=gen))
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    return padded[torch.arange(b)[:, None, None], rows, cols]


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def image_folder(root: str | Path) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]], list[str]]:
    """File lists of an ImageFolder tree: `train/<class>/*` and `val/` (or `validation/`)."""
    root = Path(root)
    val_dir = next((root / v for v in ("val", "validation") if (root / v).is_dir()), None)
    if not (root / "train").is_dir() or val_dir is None:
        raise FileNotFoundError(f"{root} needs train/<class>/ and val/<class>/ (or validation/)")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())

    def files(split: Path) -> list[tuple[Path, int]]:
        return [(f, i) for i, c in enumerate(classes) for f in sorted((split / c).glob("*"))
                if f.suffix.lower() in IMAGE_EXTENSIONS]

    return files(root / "train"), files(val_dir), classes


class FolderDataset(torch.utils.data.Dataset):
    """PIL-decoded images resized (shorter side) and cropped to `size`; random crop + flip if `train`."""

    def __init__(self, items: list[tuple[Path, int]], size: int, train: bool) -> None:
        self.items, self.size, self.train = items, size, train

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.items[i]
        img = Image.open(path).convert("RGB")
        scale = round(self.size * 1.14) / min(img.size)  # shorter side to 1.14× size, then crop
        img = img.resize((max(self.size, round(img.width * scale)),
                          max(self.size, round(img.height * scale))))
        a = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)  # [H, W, 3]
        h, w = a.shape[:2]
        if self.train:
            top = int(torch.randint(0, h - self.size + 1, ()))
            left = int(torch.randint(0, w - self.size + 1, ()))
        else:
            top, left = (h - self.size) // 2, (w - self.size) // 2
        a = a[top:top + self.size, left:left + self.size]
        if self.train and torch.rand(()) < 0.5:
            a = a.flip(1)
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        return (a - mean) / std, label
