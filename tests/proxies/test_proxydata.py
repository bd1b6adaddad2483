"""Generators and baselines of the accuracy proxies: the properties the spec cards state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnbench.proxy import data as pd


def test_mqar_keys_values_and_scored_positions():
    rng = np.random.default_rng(0)
    v, n_len, k = 256, 64, 8
    x, y = pd.mqar(rng, 200, v, n_len, k, random_non_queries=False)
    keys, vals = x[:, 0:2 * k:2], x[:, 1:2 * k:2]
    assert ((keys >= 1) & (keys < v // 2)).all() and ((vals >= v // 2) & (vals < v)).all()
    assert all(len(set(r)) == k for r in keys) and all(len(set(r)) == k for r in vals)
    assert ((y != pd.IGNORE).sum(1) == k).all()  # only the K query positions are scored
    assert (y[:, :2 * k] == pd.IGNORE).all()
    for i in range(len(x)):
        pos = np.flatnonzero(y[i] != pd.IGNORE)
        assert ((pos - 2 * k) % 2 == 0).all()
        lookup = dict(zip(keys[i], vals[i], strict=True))
        assert sorted(x[i, pos]) == sorted(keys[i])  # every key queried once
        assert all(y[i, p] == lookup[x[i, p]] for p in pos)
        rest = np.setdiff1d(np.arange(2 * k, n_len), pos)
        assert (x[i, rest] == 0).all()


def test_mqar_random_fill_keeps_structure():
    x, y = pd.mqar(np.random.default_rng(1), 100, 256, 64, 4)
    assert (x != 0).mean() > 0.99
    assert ((y != pd.IGNORE).sum(1) == 4).all()


def test_mqar_power_law_gaps_cluster_after_the_kv_block():
    def mean_gap(a: float) -> float:
        _, y = pd.mqar(np.random.default_rng(2), 2000, 512, 256, 8, power_a=a)
        pos = np.argwhere(y != pd.IGNORE)[:, 1]
        return float(((pos - 16) // 2).mean())

    near, uniform = mean_gap(0.01), mean_gap(1.0)
    assert uniform == pytest.approx((256 - 16) / 4, rel=0.1)  # uniform over 120 slots
    assert near < 0.5 * uniform


@pytest.mark.parametrize("bad", [dict(vocab=64, seq_len=64, kv_pairs=4),
                                 dict(vocab=256, seq_len=64, kv_pairs=17),
                                 dict(vocab=256, seq_len=63, kv_pairs=4)])
def test_mqar_rejects_impossible_configs(bad):
    with pytest.raises(ValueError):
        pd.mqar(np.random.default_rng(0), 2, **bad)


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_niah_needle_placement_and_scoring(depth):
    k, n_len = 3, 40
    x, y = pd.niah(np.random.default_rng(3), 50, n_len, depth, digits=k, n_filler=16)
    start = round(depth * (n_len - 2 * k - 2))
    assert (x[:, start] == pd.NEEDLE).all()
    assert (x[:, n_len - k - 1] == pd.QUERY).all()
    assert (x[:, start + 1:start + 1 + k] == x[:, n_len - k:]).all()  # the passkey is repeated after QUERY
    assert (x[:, start + 1:start + 1 + k] < 10).all()
    scored = np.flatnonzero((y != pd.IGNORE).any(0))
    assert list(scored) == list(range(n_len - k - 1, n_len - 1))
    assert (y[:, n_len - k - 1:n_len - 1] == x[:, n_len - k:]).all()  # next-token targets = digits
    filler = np.ones(n_len, bool)
    filler[[start, *range(start + 1, start + 1 + k), *range(n_len - k - 1, n_len)]] = False
    assert (x[:, filler] >= pd.FIRST_FILLER).all() and (x[:, filler] < pd.niah_vocab(16)).all()


def test_niah_random_depths_cover_the_context():
    x, _ = pd.niah(np.random.default_rng(4), 500, 64, None, haystack="periodic")
    starts = np.argmax(x == pd.NEEDLE, axis=1)
    assert starts.min() <= 2 and starts.max() >= 54


@pytest.mark.parametrize("needles,values,queries", [(4, 1, 1), (1, 2, 1), (4, 1, 2), (3, 2, 2)])
@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_niah_keyed_needles_answers_and_depth(needles, values, queries, depth):
    k, n_len, nf, n_keys = 3, 80, 16, 8
    x, y = pd.niah(np.random.default_rng(5), 40, n_len, depth, digits=k, n_filler=nf, needles=needles,
                   values=values, queries=queries, n_keys=n_keys)
    first_key = pd.FIRST_FILLER + nf
    assert x.max() < pd.niah_vocab(nf, n_keys)
    hay = n_len - queries * (2 + values * k)
    for row, lab in zip(x, y, strict=True):
        starts = np.flatnonzero(row[:hay] == pd.NEEDLE)
        assert len(starts) == needles * values  # blocks never overlap, so every NEEDLE survives
        keys = row[starts + 1]
        assert (keys >= first_key).all() and len(set(keys)) == needles  # distinct keys, `values` needles each
        assert round(depth * (hay - k - 2)) in starts  # the probed needle sits at depth δ
        pos = hay
        for _ in range(queries):
            assert row[pos] == pd.QUERY and row[pos + 1] in keys
            mine = starts[keys == row[pos + 1]]  # in order of appearance
            answer = np.concatenate([row[s + 2:s + 2 + k] for s in mine])
            assert (row[pos + 2:pos + 2 + len(answer)] == answer).all()
            assert (lab[pos + 1:pos + 1 + len(answer)] == answer).all()  # each digit predicted from the token before
            pos += 2 + len(answer)
        assert (lab != pd.IGNORE).sum() == queries * values * k
    probed_key = x[:, round(depth * (hay - k - 2)) + 1]
    assert (probed_key == x[:, hay + 1]).all()  # the depth-δ needle belongs to the first queried key


def test_niah_keyed_rejects_what_does_not_fit():
    with pytest.raises(ValueError, match="cannot hold"):
        pd.niah(np.random.default_rng(0), 2, 24, 0.5, digits=3, needles=4)
    with pytest.raises(ValueError, match="queries <= needles"):
        pd.niah(np.random.default_rng(0), 2, 80, 0.5, digits=3, needles=2, queries=3)


def test_icl_baselines_known_cases():
    d, k = 5, 20
    p = pd.regression(np.random.default_rng(5), 4096, d, k, noise_var=0.0, beta_var=1.0)
    assert np.abs(pd.ridge_predict(p, 0.0) - p.yq).max() < 1e-8  # noise-free, k >= d: OLS is exact
    eta = pd.fit_gd1_step(p)
    assert eta == pytest.approx(1 / (k + d + 1), rel=0.1)  # best GD step for isotropic noise-free data
    base = pd.icl_baselines(p, 0.0, 1.0, eta)
    assert np.mean(base["zero"] ** 2) == 0 and np.mean(p.yq ** 2) == pytest.approx(d, rel=0.1)


def test_icl_bayes_ridge_beats_ols_and_gd1_near_the_interpolation_threshold():
    d, k, nv = 5, 6, 0.1
    p = pd.regression(np.random.default_rng(6), 8192, d, k, nv)
    held = pd.regression(np.random.default_rng(7), 8192, d, k, nv)
    preds = pd.icl_baselines(p, nv, 1 / d, pd.fit_gd1_step(held))
    err = {n: np.mean((v - p.yq) ** 2) for n, v in preds.items()}
    assert err["ridge"] < err["ols"] and err["ridge"] < err["gd1"] < err["zero"]
    assert err["ridge"] > nv  # the noise is an error floor


def test_icl_garg_baselines_and_curriculum():
    p = pd.regression(np.random.default_rng(9), 64, 4, 6, noise_var=0.0, beta_var=1.0)
    base = pd.icl_baselines(p, 0.0, 1.0, 0.1)
    assert np.allclose(base["averaging"], pd.gd1_direction(p) / 6)
    near = pd.RegressionPrompts(p.xs, p.ys, p.xs[:, 2] + 1e-9, p.ys[:, 2], p.beta)
    assert np.allclose(pd.knn_predict(near, 1), p.ys[:, 2])  # the query's own example is its 1-NN
    assert np.allclose(pd.knn_predict(p, 10), p.ys.mean(1))  # fewer examples than neighbours: all of them
    assert [pd.curriculum_at(s, 5, 20, 1, 2000) for s in (0, 1999, 2000, 30_000, 10**6)] == [5, 5, 6, 20, 20]
    assert [pd.curriculum_at(s, 11, 41, 2, 2000) for s in (0, 4000, 10**6)] == [11, 15, 41]
    sub = pd.regression(np.random.default_rng(10), 32, 8, 5, noise_var=0.0, beta_var=1.0, active_dims=3)
    assert (sub.xs[..., 3:] == 0).all() and (sub.xq[:, 3:] == 0).all() and (sub.xs[..., :3] != 0).all()
    assert np.allclose(sub.ys, np.einsum("nkd,nd->nk", sub.xs, sub.beta))  # y formed after zeroing


def test_icl_token_formats():
    p = pd.regression(np.random.default_rng(8), 3, 4, 7)
    tok = p.concat_tokens()
    assert tok.shape == (3, 8, 5) and (tok[:, -1, -1] == 0).all()
    assert np.allclose(tok[:, :7, -1], p.ys) and np.allclose(tok[:, -1, :4], p.xq)
    inter, ys = p.interleaved_tokens()
    assert inter.shape == (3, 14, 4) and np.allclose(inter[:, 0::2], p.xs)
    assert np.allclose(inter[:, 1::2, 0], ys) and (inter[:, 1::2, 1:] == 0).all()


def test_stratified_subset_keeps_class_proportions():
    y = np.repeat(np.arange(4), [100, 200, 300, 400])
    idx = pd.stratified_subset(y, 100, np.random.default_rng(0))
    assert len(np.unique(idx)) == 100
    assert list(np.bincount(y[idx])) == [10, 20, 30, 40]


def test_patchify_and_shift():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4, 1)
    p = pd.patchify(x, 2)
    assert p.shape == (2, 4, 4)
    assert p[0, 1].tolist() == [2, 3, 6, 7]  # second patch of the first row
    s = pd.random_shift(x, 1, torch.Generator().manual_seed(0))
    assert s.shape == x.shape
    for i in range(2):  # each image is a shifted copy: its values are a subset of the original
        assert set(s[i].flatten().tolist()) - {0.0} <= set(x[i].flatten().tolist())


def test_digits_fallback_loads_offline():
    data = pd.digits()
    assert data.x_train.shape[1:] == (8, 8, 1) and len(data.y_train) + len(data.y_test) == 1797
    assert 0 <= data.x_train.min() and data.x_train.max() <= 1


@pytest.mark.skipif(not pd.FASHION_MNIST_DIR.exists(),
                    reason="apt package dataset-fashion-mnist not installed")
def test_fashion_mnist_reads_idx_files():
    data = pd.fashion_mnist()
    assert data.x_train.shape == (60000, 28, 28, 1) and data.x_test.shape == (10000, 28, 28, 1)
    assert list(np.bincount(data.y_test)) == [1000] * 10


def test_image_folder_layout(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    for split in ("train", "validation"):
        for c in ("b_cls", "a_cls"):
            (tmp_path / split / c).mkdir(parents=True)
            pil.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(tmp_path / split / c / "0.png")
    tr, va, classes = pd.image_folder(tmp_path)
    assert classes == ["a_cls", "b_cls"] and len(tr) == len(va) == 2
    img, label = pd.FolderDataset(tr, 16, train=True)[1]
    assert img.shape == (16, 16, 3) and label == 1
