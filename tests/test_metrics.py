"""The metric table: lookup rules, and every metric a suite emits is declared by that suite (or CORE)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from attnbench import results
from attnbench.cli import app
from attnbench.metrics import CORE, HIGHER, LOWER, MetricSpec, MetricTable, higher, info, lower, metric_table

FAST = ["--set", "shapes.seq_lens=[32]", "--set", "shapes.heads=2", "--set", "shapes.head_dim=8",
        "--set", "timing.min_time_s=0.0", "--set", "timing.max_reps=2"]
TINY = {
    "mqar": "n_train=64 n_test=16 steps=2 eval_every=1 vocab=64 seq_len=[32] kv_pairs=[[2]]",
    "niah": "steps=2 min_len=16 max_len=24 eval_lens=[24] eval_depths=[0.5] eval_samples=2 d_model=16 batch_size=2",
    "icl_regression": "steps=2 eval_prompts=8 eval_ks=[4] n_examples=4 batch_size=4",
    "image_cls": "dataset=\"digits\" n_train=32 digits_epochs=1 batch_size=16 d_model=16",
    "hallucination": "steps=3 n_pool=64 pope_images=8 chair_images=8 d_model=16 batch_size=8",
}


def test_exact_names_win_then_longer_patterns() -> None:
    t = MetricTable([higher("acc"), higher("acc_*"), info("acc_lr*"), lower("err", "mse")])
    assert t.get("acc").name == "acc" and t.get("acc_k4").name == "acc_*"
    assert t.get("acc_lr0.1").direction is None
    assert t.get("nothing") is None and t.direction("nothing") is None
    assert t.label("acc_k4") == "acc k4" and t.get("status") == CORE[0]


def test_a_name_declared_twice_must_mean_the_same() -> None:
    t = MetricTable([lower("latency_ms", "ms", timed=True)])
    t.add(lower("latency_ms", "ms", timed=True), suite="scaling")  # identical: fine
    with pytest.raises(ValueError, match="declared twice"):
        t.add(MetricSpec("latency_ms", "ms", HIGHER))


def test_registered_suites_declare_kind_and_metrics() -> None:
    t = metric_table()
    for suite in ("latency", "memory", "flops", "correctness", "scaling"):
        assert t.suite_metrics(suite), suite
    assert t.get("latency_ms").direction == LOWER and t.get("latency_ms").timed
    assert t.get("peak_mem_bytes").floor > 0 and t.get("speedup_bound").direction is None
    assert t.get("mqar_acc_k8").direction == HIGHER and t.get("icl_garg_mse/gd1").direction == LOWER
    assert not t.get("chair_s").timed  # a name ending in _s is not a timing
    assert [s.name for s in t.headline("latency")][:2] == ["latency_ms", "tflops"]
    assert t.order(["speedup_vs_dense", "latency_ms", "zzz"]) == ["latency_ms", "speedup_vs_dense", "zzz"]


def undeclared(df: pd.DataFrame) -> set[tuple[str, str]]:
    """(suite, metric) pairs emitted by a suite that neither it nor CORE declares."""
    t = metric_table()
    out = set()
    for suite, metric in df[["suite", "metric"]].drop_duplicates().itertuples(index=False):
        if not any(s.matches(metric) for s in (*t.suite_metrics(suite), *CORE)):
            out.add((suite, metric))
    return out


def test_kernel_suites_emit_only_declared_metrics(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["run", "--preset", "smoke", "--suites", "latency,memory,flops,correctness,scaling",
                                   "--methods", "mha,sliding_window,moba,moh,linear", "-o", str(tmp_path),
                                   "--no-report", *FAST])
    assert res.exit_code == 0, res.output
    df = results.load([tmp_path])
    assert len(df[df["status"] == "ok"]) > 50
    assert undeclared(df) == set()


@pytest.mark.slow
def test_proxy_suites_emit_only_declared_metrics(tmp_path: Path) -> None:
    sets = [a for suite, kv in TINY.items() for item in kv.split() for a in ("--set", f"suite.{suite}.{item}")]
    res = CliRunner().invoke(app, ["run", "--preset", "smoke", "--suites", ",".join(TINY), "--methods", "mha,var",
                                   "-o", str(tmp_path), "--no-report", *sets])
    assert res.exit_code == 0, res.output
    df = results.load([tmp_path])
    assert set(df.loc[df["status"] == "ok", "suite"]) == set(TINY)
    assert undeclared(df) == set()
