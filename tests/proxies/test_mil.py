"""The multiple-instance proxy: bag generator statistics, the AUC, the query pool's weights, applicability,
and one tiny training run per pooling kind (mha through a learned query, acmil as a bag pool)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attnbench.presets import Preset, load_preset
from attnbench.registry import METHODS, SUITES
from attnbench.spec import Backend
from attnbench.suite import ResolvedCase
from attnbench.suites.mil import MILModel, QueryPool, auc, make_bags

TINY = dict(dataset="digits", bag_size=6, n_train_bags=16, n_test_bags=12, epochs=1, batch_size=4, d_model=16)


def test_bags_have_the_promised_composition() -> None:
    y = np.random.default_rng(0).integers(0, 10, 500)
    bags = make_bags(y, 200, 8, target=3, max_pos=2, rng=np.random.default_rng(1))
    assert bags.items.shape == (200, 8) and bags.labels.sum() == 100
    np.testing.assert_array_equal(bags.is_target, y[bags.items] == 3)
    n_pos = bags.is_target.sum(1)
    assert (n_pos[bags.labels == 0] == 0).all()
    assert set(n_pos[bags.labels == 1]) == {1, 2}
    assert all(len(set(row)) == 8 for row in bags.items)  # no image twice in a bag
    again = make_bags(y, 200, 8, target=3, max_pos=2, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(again.items, bags.items)
    with pytest.raises(ValueError, match="max_positives"):
        make_bags(y, 4, 8, target=3, max_pos=9, rng=np.random.default_rng(1))


def test_auc_is_the_mann_whitney_statistic() -> None:
    assert auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert auc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0
    assert auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5  # a tie counts half
    rng = np.random.default_rng(2)
    s, lab = rng.integers(0, 5, 60).astype(float), rng.integers(0, 2, 60).astype(bool)
    pairs = [(a > b) + 0.5 * (a == b) for a in s[lab] for b in s[~lab]]
    assert math.isclose(auc(s, lab), float(np.mean(pairs)))
    assert math.isnan(auc(s, np.ones(60, bool)))


def test_query_pool_weights_are_the_attention_row() -> None:
    torch.manual_seed(0)
    pool = QueryPool(METHODS.get("mha"), Backend.REFERENCE, 16, 4, {}).eval()
    x = torch.randn(3, 7, 16)
    out = pool(x)
    q = pool.q(pool.query).view(1, 1, 4, 4).transpose(1, 2)
    k = pool.k(x).view(3, 7, 4, 4).transpose(1, 2)
    v = pool.v(x).view(3, 7, 4, 4).transpose(1, 2)
    p = torch.softmax(q @ k.transpose(-1, -2) / 2, -1)  # [3, 4, 1, 7]
    torch.testing.assert_close(pool.bag_weights, p.mean(1)[:, 0])
    torch.testing.assert_close(out, pool.out((p @ v).transpose(1, 2).reshape(3, 1, 16)))


def test_acmil_branch_masks_change_the_mil_training_loss() -> None:
    torch.manual_seed(0)
    model = MILModel(METHODS.get("acmil"), Backend.REFERENCE, 12, 16, 2, {"top_k": 4}).train()
    x, y = torch.randn(4, 6, 12), torch.tensor([0, 1, 1, 0])
    torch.manual_seed(1)
    masked = model.loss(x, y)
    model.pool.mask_prob = 0.0
    plain = model.loss(x, y)
    assert not torch.isclose(masked, plain)
    assert model.pool.branch_logits.shape == (4, 5, 2)  # per-branch classifiers feed the loss
    slide_only = torch.nn.functional.cross_entropy(model(x), y)
    assert plain > slide_only
    model.eval()
    torch.testing.assert_close(model.loss(x, y), plain)  # evaluation never masks


def _case(method: str):
    preset = Preset("smoke", {"suite": {"mil": {"methods": [method], **TINY}}})
    (case,) = SUITES.get("mil").cases(preset, METHODS)
    return ResolvedCase.resolve(case, METHODS)


@pytest.mark.parametrize("method", ["mha", "acmil"])
def test_tiny_run(method: str) -> None:
    rc = _case(method)
    suite = SUITES.get("mil")
    assert suite.applies_to(rc.entry, rc.backend) is None and rc.why_not() is None
    rows = {r.metric: r.value for r in suite.run(rc)}
    for m in ("bag_acc", "bag_auc", "loc_top1", "inst_auc", "top_mass"):
        assert 0.0 <= rows[m] <= 1.0, (m, rows[m])
    assert rows["steps"] == 4 and rows["params"] > 0
    declared = {s.name for s in suite.metrics} | {"steps", "wall_s", "truncated", "train_loss"}
    assert set(rows) <= declared


def test_applicability_and_workloads() -> None:
    suite = SUITES.get("mil")
    assert "not a bag pool" in suite.applies_to(METHODS.get("shvit"), Backend.REFERENCE)
    assert _case("mha").workload.seq_q == 1  # one learned query attends to the bag
    assert _case("acmil").workload.seq_q == TINY["bag_size"]
    assert "mil" not in load_preset("smoke").data.get("suites", [])
