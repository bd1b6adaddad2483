"""Microbenchmarks of hot paths (pytest-benchmark). They measure and never assert timings.

`pytest tests/bench --benchmark-enable` times them; the default `--benchmark-disable` runs each
once, so they double as quick smoke tests. Compare groups with `--benchmark-group-by=group`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attnbench.flops import causal_pairs, dense_flops, mask_flops
from attnbench.impls.sliding_window import window_flops, window_mask
from attnbench.inputs import make_qkv
from attnbench.presets import Preset
from attnbench.registry import METHODS
from attnbench.results import load, write_part
from attnbench.runner import Runner
from attnbench.spec import Workload, params_json
from attnbench.suite import Case, Row

W = Workload(batch=1, heads_q=4, heads_kv=4, seq_q=256, seq_kv=256, head_dim=32, causal=True)
PAIRS = [("mha", "reference"), ("mha", "sdpa"), ("gqa", "reference"), ("gqa", "sdpa"),
         ("sliding_window", "reference"), ("sliding_window", "sdpa"), ("sliding_window", "native"),
         ("linear", "reference"), ("linear", "native")]


@pytest.mark.parametrize(("method", "backend"), PAIRS, ids=[f"{m}-{b}" for m, b in PAIRS])
def test_forward_reference_vs_fused(benchmark, method: str, backend: str) -> None:
    entry = METHODS.get(method)
    params = entry.spec.params()
    w = entry.spec.shape(W, params)
    q, k, v = make_qkv(w)
    fn = entry.impl(backend).prepare(q, k, v, causal=w.causal, params=params)
    benchmark.group = f"forward {method} {w.id}"
    with torch.no_grad():
        out = benchmark(fn, q, k, v)
    assert out.shape == q.shape


def test_flops_window_analytic_long(benchmark) -> None:
    benchmark.group = "flops"
    w = W.replace(seq_q=16384, seq_kv=16384)
    assert benchmark(window_flops, w, {"window": 1024}).useful > 0


def test_flops_window_from_mask(benchmark) -> None:
    benchmark.group = "flops"
    w = W.replace(seq_q=2048, seq_kv=2048)
    mask = window_mask(2048, 2048, window=1024, causal=True)
    assert benchmark(mask_flops, w, mask).useful > 0


def test_flops_dense_with_kv_prefix(benchmark) -> None:
    benchmark.group = "flops"
    w = W.replace(seq_q=4096, seq_kv=8192)
    assert benchmark(dense_flops, w).useful == 4.0 * 4 * 32 * causal_pairs(4096, 8192)


def test_results_rows_and_part_write(benchmark, tmp_path: Path) -> None:
    """Turn 200 measurements into schema rows and write one atomic Parquet part."""
    runner = Runner(Preset("bench", {"device": "cpu"}), tmp_path, run_id="bench")
    case = Case("latency", "mha", "sdpa", W, params_json({}))
    measured = [Row(metric=f"m{i}", value=float(i), unit="ms", stat="median", n=5, p20=0.9 * i,
                    p80=1.1 * i, samples=[float(i)] * 5) for i in range(200)]
    benchmark.group = "results"
    benchmark(lambda: write_part(tmp_path / "results", runner.rows(case, W, measured), run_id="bench"))
    assert len(load([tmp_path / "results"], latest_only=False)) % 200 == 0
