"""image_cls: CLS token where the paper reads one, the grid for 2-D methods, the SHViT macro backbone,
the self-supervised objectives, variants, and the ImageFolder path on a small generated folder."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch

from attnbench.presets import Preset
from attnbench.registry import METHODS, SUITES
from attnbench.suite import Case, ResolvedCase, Row

TINY: dict[str, Any] = dict(dataset="digits", n_train=64, digits_epochs=1, batch_size=32, d_model=16, probe_steps=20)


def _cases(method: str, **settings: Any) -> list[Case]:
    section = {"methods": [method], "densities": [], **settings}
    return SUITES.get("image_cls").cases(Preset("smoke", {"suite": {"image_cls": section}}), METHODS)


def _case(method: str, **settings: Any) -> Case:
    cases = _cases(method, **settings)
    assert len(cases) == 1, cases
    return cases[0]


def _run(case: Case) -> dict[str, float]:
    rows: list[Row] = SUITES.get("image_cls").run(ResolvedCase.resolve(case, METHODS))
    bad = [r for r in rows if r.status != "ok"]
    assert not bad, bad[0].error
    return {r.metric: r.value for r in rows}


def test_cls_token_for_the_methods_whose_papers_read_one() -> None:
    for method, pool, n in [("mha", "mean", 16), ("dcal", "cls", 17), ("sparsifiner", "cls", 17)]:
        c = _case(method, **TINY)  # digits: 8×8 images, patch 2 → 4×4 patches
        assert json.loads(c.options)["pool"] == pool and c.workload.seq_q == n, method
    agent = _case("agent", **TINY, pool="cls")  # a grid method keeps the patch grid; the CLS row is extra
    assert agent.workload.spatial == (4, 4) and json.loads(agent.options)["pool"] == "cls"


def test_cls_pool_reads_token_zero() -> None:
    from attnbench.suites._image_models import ImageModelConfig, ImageViT

    torch.manual_seed(0)
    model = ImageViT(ImageModelConfig(method="agent", n_classes=3, d_model=16, grid=(4, 4), patch=2, pool="cls",
                                      takes_grid=True)).eval()
    x = torch.rand(2, 8, 8, 1)
    h = model.body(model.inputs(x))
    assert h.shape == (2, 17, 16)
    torch.testing.assert_close(model.features(x), h[:, 0])


@pytest.mark.parametrize("method", ["dcal", "medusa", "agent"])
def test_methods_train_in_the_vit(method: str) -> None:
    m = _run(_case(method, **TINY))
    assert 0.0 <= m["top1"] <= 1.0 and m["params"] > 0


def test_shvit_backbone_case_and_run() -> None:
    c = _case("shvit", **TINY, backbone="shvit")  # digits stem 2 → 4×4, attention stage 2×2
    assert c.workload.seq_q == 4 and json.loads(c.options)["shvit_depths"] == [1, 2]
    assert _run(c)["top1"] >= 0.0
    skipped = SUITES.get("image_cls").run(ResolvedCase.resolve(_case("dcal", **TINY, backbone="shvit"), METHODS))
    assert skipped[0].status == "skipped"


def test_objectives_are_scored_by_linear_probe_and_variants_make_cases() -> None:
    cases = _cases("mha", **TINY, variants=[{}, {"objective": "simclr"}, {"objective": "amcl", "amcl_heads": 2}])
    assert [json.loads(c.options)["objective"] for c in cases] == ["supervised", "simclr", "amcl"]
    m = _run(cases[2])
    assert "probe_top1_amcl" in m and "top1" not in m and 0.0 <= m["probe_top1_amcl"] <= 1.0


def test_full_tier_reads_an_image_folder() -> None:
    from attnbench.suites.image_cls import TIERS

    assert TIERS["full"].dataset == "imagefolder" and TIERS["full"].shvit_stem == 16


def test_image_folder_path_on_a_generated_folder(tmp_path) -> None:
    pil = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 3)):
        for c, tone in (("bright", 200), ("dark", 40)):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                a = np.clip(tone + rng.normal(0, 20, (10, 12, 3)), 0, 255).astype(np.uint8)
                pil.fromarray(a).save(tmp_path / split / c / f"{i}.png")
    c = _case("mha", dataset="imagefolder", data_root=str(tmp_path), image_size=8, patch=4, epochs=2, batch_size=4,
              d_model=16)
    assert c.workload.seq_q == 4
    m = _run(c)
    assert m["steps"] == 8 and 0.0 <= m["top1"] <= 1.0  # 16 train images / batch 4 × 2 epochs
