"""Timing, memory, FLOPs and device helpers (behaviour, never wall-clock thresholds)."""

from __future__ import annotations

import pytest
import torch

from attnbench import device, flops, memory, timing
from attnbench.spec import Workload


def test_bench_keeps_every_sample_and_bounds_reps() -> None:
    calls = []
    t = timing.bench(lambda: calls.append(1), min_time_s=10.0, max_reps=7, warmup_s=0.0)
    assert t.n == 7 and len(calls) == 8  # one warm-up call
    assert t.p20 <= t.median <= t.p80


def test_bench_min_reps_when_slow() -> None:
    t = timing.bench(lambda: None, min_time_s=0.0, max_reps=50, min_reps=4, warmup_s=0.0)
    assert t.n == 4


def test_quantiles() -> None:
    t = timing.Timing((1.0, 2.0, 3.0, 4.0, 5.0))
    assert t.median == 3.0 and t.quantile(0.0) == 1.0 and t.quantile(1.0) == 5.0 and t.p20 == 1.8


def test_causal_pairs_matches_mask() -> None:
    for nq, nk in ((8, 8), (4, 8), (1, 5)):
        mask = torch.arange(nk)[None, :] <= torch.arange(nq)[:, None] + (nk - nq)
        assert flops.causal_pairs(nq, nk) == int(mask.sum())


def test_dense_flops_formula() -> None:
    w = Workload(batch=2, heads_q=3, heads_kv=3, seq_q=16, seq_kv=16, head_dim=8)
    assert flops.dense_flops(w).useful == 4 * 2 * 3 * 16 * 16 * 8


def test_mask_flops_useful_and_executed() -> None:
    w = Workload(batch=1, heads_q=1, seq_q=256, seq_kv=256, head_dim=8, causal=True)
    mask = torch.ones(256, 256).tril().bool()
    fc = flops.mask_flops(w, mask, block=(128, 128))
    assert fc.useful == 4 * mask.sum().item() * 8
    assert fc.executed == 4 * 3 * 128 * 128 * 8
    stats = flops.tile_stats(mask, (128, 128))
    assert stats["tiles_visited"] == 3 and stats["tiles_full"] == 1 and stats["tiles_partial"] == 2


def test_flop_counter_counts_cpu_sdpa() -> None:
    q = torch.randn(1, 2, 32, 8)
    counted = flops.counted_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q))
    assert counted == 4 * 2 * 32 * 32 * 8


def _peak_of_temporary(mib: str) -> int:
    nbytes = int(mib) * 1024 * 1024
    return memory.peak_rss_above_baseline(lambda: torch.ones(nbytes // 4).sum())


@pytest.mark.skipif(memory.cpu_peak_supported() is not None, reason="needs Linux /proc peak RSS reset")
def test_cpu_peak_in_worker_sees_each_temporary() -> None:
    """In the memory suite's worker (mmap threshold pinned), every case's peak is its own, even after a
    larger one freed its memory; in a long-lived process the heap may reuse it and hide the peak."""
    for mib in (64, 16, 64):
        peak = memory.in_worker(_peak_of_temporary, str(mib))
        assert 0.9 * mib * 2**20 <= peak <= 1.5 * mib * 2**20


def test_peak_table_lookup() -> None:
    assert device.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.0
    assert device.peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756.0
    assert device.peak_tflops("Unknown GPU", "bfloat16") is None


def test_capture_cpu() -> None:
    info = device.capture("cpu")
    assert info.device_kind == "cpu" and info.num_threads == torch.get_num_threads()
    with pytest.raises(ValueError, match="unknown device"):
        device.resolve("tpu")


def test_block_mask_flops_counts_the_tiles_of_the_mask() -> None:
    from torch.nn.attention.flex_attention import create_block_mask

    w = Workload(batch=2, heads_q=3, seq_q=384, seq_kv=384, head_dim=8, causal=True)
    bm = create_block_mask(lambda b, h, q, k: (q - k >= 0) & (q - k < 100), None, None, 384, 384, device="cpu")
    mask = (torch.arange(384)[:, None] - torch.arange(384)[None, :]).clamp(min=-1).lt(100) & \
        (torch.arange(384)[:, None] >= torch.arange(384)[None, :])
    brute = flops.mask_flops(w, mask)
    fc = flops.block_mask_flops(w, bm, brute.useful, routing=10.0)
    assert fc.executed == brute.executed + 10.0 and fc.useful == brute.useful + 10.0
    assert flops.speedup_bound(100.0, None) is None and flops.speedup_bound(100.0, 25.0) == 4.0
    eager = flops.all_pairs_flops(w, brute.useful)
    assert eager.executed == 4 * 2 * 3 * 384 * 384 * 8 > fc.executed
