"""The Shapes-scene proxy: boards hold what they promise and the label is the geometric answer;
one tiny training run each for mha (learned positions) and oat (distance bias, no added positions)."""

from __future__ import annotations

import numpy as np
import pytest

from attnbench.presets import Preset, load_preset
from attnbench.registry import METHODS, SUITES
from attnbench.suite import ResolvedCase
from attnbench.suites.shapes_scene import EMPTY, PROBE, scenes, targets

TINY = dict(grid=4, n_objects=3, n_shapes=3, steps=3, n_test=16, batch_size=4, d_model=16, n_heads=2, warmup=1)


@pytest.mark.parametrize("task", ["nearest", "farthest"])
def test_boards_and_labels(task: str) -> None:
    grid, n_obj = 5, 4
    s = scenes(np.random.default_rng(0), 300, grid, n_obj, 3, task)
    assert ((s.tokens == PROBE).sum(1) == 1).all() and ((s.tokens >= 2).sum(1) == n_obj).all()
    assert (s.tokens[np.arange(300), s.probe] == PROBE).all()
    for i in range(300):  # brute force: the label is the unique nearest (farthest) shape
        cells = np.flatnonzero(s.tokens[i] >= 2)
        (py, px), (cy, cx) = divmod(int(s.probe[i]), grid), np.divmod(cells, grid)
        d = np.hypot(cy - py, cx - px)
        best = np.argmin(d) if task == "nearest" else np.argmax(d)
        assert np.sum(np.isclose(d, d[best])) == 1
        assert s.tokens[i, cells[best]] - 2 == s.label[i] and np.isclose(d[best], s.dist[i])
    counts = np.bincount(s.label, minlength=3)
    assert counts.min() > 60  # shapes are drawn uniformly
    y = targets(s)
    assert ((y != -100).sum(1) == 1).all() and (y[np.arange(300), s.probe] == s.label).all()
    assert (s.tokens == EMPTY).sum() == 300 * (grid * grid - n_obj - 1)


def test_generation_is_seeded_and_checked() -> None:
    a = scenes(np.random.default_rng(3), 20, 4, 3, 3, "nearest")
    b = scenes(np.random.default_rng(3), 20, 4, 3, 3, "nearest")
    np.testing.assert_array_equal(a.tokens, b.tokens)
    with pytest.raises(ValueError, match="do not fit"):
        scenes(np.random.default_rng(0), 1, 2, 4, 3, "nearest")


@pytest.mark.parametrize("method", ["mha", "oat"])
def test_tiny_run(method: str) -> None:
    suite = SUITES.get("shapes_scene")
    (case,) = suite.cases(Preset("smoke", {"suite": {"shapes_scene": {"methods": [method], **TINY}}}), METHODS)
    rc = ResolvedCase.resolve(case, METHODS)
    assert suite.applies_to(rc.entry, rc.backend) is None and rc.why_not() is None
    if method == "oat":  # the grid and no added positions: the distance bias is its position signal
        assert rc.workload.spatial == (4, 4) and rc.options["pos"] == "none"
    else:
        assert rc.workload.spatial is None and rc.options["pos"] == "learned"
    rows = {r.metric: r.value for r in suite.run(rc)}
    assert 0.0 <= rows["scene_acc"] <= 1.0 and rows["steps"] == 3
    declared = {s.name for s in suite.metrics} | {"steps", "wall_s", "truncated", "train_loss"}
    assert set(rows) <= declared
    assert "shapes_scene" not in load_preset("smoke").data.get("suites", [])
