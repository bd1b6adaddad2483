"""Head analysis: invariants of the map statistics, pruning importance, capture, heatmap, HeadHunter."""

from __future__ import annotations

import torch
from torch import nn

from attnbench.layers import build_layer
from attnbench.suites.hallucination import analysis


class Tiny(nn.Module):
    def __init__(self, layers=2, d=16, h=2):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, d)
        self.attn = nn.ModuleList(build_layer("mha", "reference", d, h, causal=True) for _ in range(layers))
        self.head = nn.Linear(d, 2)

    def forward(self, x):
        h = self.emb(x)
        for a in self.attn:
            h = h + a(h)
        return self.head(h)


def test_distance_identity_and_uniform():
    n, g = 16, (4, 4)
    eye = torch.eye(n)[None, None]
    assert float(analysis.distance_profile(eye, g)[1].abs().max()) == 0.0
    prof, mean = analysis.distance_profile(torch.full((1, 1, n, n), 1 / n), g)
    torch.testing.assert_close(prof, torch.full_like(prof, 1 / n).where(prof > 0, prof), atol=1e-12, rtol=0)
    assert float(mean) > 1.0


def test_capture_entropy_sink_and_vhd():
    m = Tiny().eval()
    x = torch.randint(0, 10, (3, 12))
    _, caps = analysis.capture(m, x)
    p = caps[0].probs()
    torch.testing.assert_close(p.sum(-1), torch.ones(3, 2, 12))
    assert analysis.sink_mass(p).shape == (2,) and float(analysis.entropy(p).min()) >= 0
    img = torch.zeros(12, dtype=torch.bool)
    assert float(analysis.vhd_scores(caps, img).abs().max()) == 0.0  # no image tokens ⇒ VHD 0
    img[:4] = True
    assert float(analysis.vhd_scores(caps, img).min()) > 0


def test_head_importance_zero_wo_head_is_zero():
    m = Tiny().eval()
    with torch.no_grad():
        m.attn[1].out.weight[:, 8:] = 0  # head 1 of layer 1 has zero W_O columns
    x = torch.randint(0, 10, (4, 8))
    y = torch.randint(0, 2, (4, 8))

    def target(logits):
        loss = nn.functional.cross_entropy(logits.reshape(-1, 2), y.reshape(-1))
        pr = logits.softmax(-1)
        return loss, (pr.argmax(-1) == y).float().mean(), pr.gather(-1, y[..., None]).mean()

    imp = analysis.head_importance(m, (x,), target)
    assert set(imp) == {"loss", "acc", "conf", "taylor"}
    for key in imp:
        assert float(imp[key][1, 1].abs()) < 1e-6
    assert float(imp["loss"].abs().sum()) > 0


def test_rows_heatmap_and_headhunter():
    m = Tiny().eval()
    x = torch.randint(0, 10, (2, 8))
    order, first = analysis.head_hunter(m, lambda mm: float(mm(x)[..., 0].mean()), rounds=2, k=1)
    assert len(order) == 2 and len(set(order)) == 2 and first.shape == (2, 2)
    assert order[0] == tuple(int(i) for i in divmod(int(first.flatten().argmax()), 2))
    rows = analysis.to_rows({"vhd": torch.tensor([[1.0, -2.0], [0.5, float("nan")]])}, "mha")
    assert len(rows) == 3 and rows[0]["params"] == '{"head": 0, "layer": 0}'
    grid = analysis.rows_grid(rows, "vhd")
    assert grid.shape == (2, 2) and torch.isnan(grid[1, 1])
    assert analysis.heatmap_svg(rows, "vhd").lstrip().startswith("<?xml")


def test_pattern_features_cluster_local_global_and_cls_heads():
    import numpy as np

    from attnbench.suites.hallucination import vit

    n = 17  # CLS + 4×4 patches
    eye = torch.eye(n)
    uniform = torch.full((n, n), 1 / n)
    cls = torch.zeros(n, n)
    cls[:, 0] = 1.0
    maps = torch.stack([eye, uniform, cls, eye * 0.9 + uniform * 0.1, uniform, cls])[None]  # [1, 6, n, n]
    feats, prof = vit.pattern_features(maps)
    assert feats.shape[0] == 6 and prof.shape[0] == 6
    np.testing.assert_allclose(prof.sum(-1)[[0, 1, 3, 4]], 1.0)
    assert prof[0, 0] == 1.0  # the identity head attends at distance 0 only
    labels = vit.cluster_heads(feats, k=3)
    assert labels[0] == labels[3] and labels[1] == labels[4] and labels[2] == labels[5]
    assert len({labels[0], labels[1], labels[2]}) == 3


def test_vit_analysis_rows_and_cluster_figure():
    from attnbench.suites.hallucination import vit

    scores, profiles = vit.analyze_vit(method="mha", steps=5, n_probe=32, k=2)
    rows = analysis.to_rows(scores, "mha")
    grid = analysis.rows_grid(rows, "pattern_cluster")
    assert grid.shape == (2, 2) and set(grid.flatten().tolist()) <= {0.0, 1.0}
    assert {"head_importance_loss", "attn_distance", "cls_mass", "vit_top1"} <= {r["metric"] for r in rows}
    assert vit.cluster_svg(rows, profiles).lstrip().startswith("<?xml")


def test_cli_analyze_a_vit_writes_cluster_rows_and_figure(tmp_path):
    from typer.testing import CliRunner

    from attnbench import results
    from attnbench.cli import app

    res = CliRunner().invoke(app, ["analyze", "--model-kind", "vit", "--steps", "3", "-o", str(tmp_path / "r"),
                                   "--heatmaps", str(tmp_path / "h")])
    assert res.exit_code == 0, res.output
    df = results.load([tmp_path / "r"])
    assert {"pattern_cluster", "attn_distance", "head_importance_loss"} <= set(df["metric"])
    assert "cluster" in (tmp_path / "h" / "pattern_cluster.svg").read_text()
    bad = CliRunner().invoke(app, ["analyze", "--model-kind", "resnet"])
    assert bad.exit_code == 2 and "model-kind" in bad.output
