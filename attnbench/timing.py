"""All timing goes through here: synchronised, warmed up, every sample kept.

CPU: `perf_counter_ns` around each call with the thread count fixed by the runner. CUDA: events
around each call, an L2 flush between repetitions, optional CUDA-graph replay. Warm-up and
repetitions are budgeted by time, bounded by counts.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

_L2_FLUSH_BYTES = 256 * 1024 * 1024  # larger than any current GPU's L2


@dataclass(frozen=True, slots=True)
class Timing:
    """Samples in milliseconds with the summary statistics the results carry."""

    samples_ms: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples_ms)

    def quantile(self, q: float) -> float:
        xs = sorted(self.samples_ms)
        pos = q * (len(xs) - 1)
        lo, hi = int(pos), min(int(pos) + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    @property
    def p20(self) -> float:
        return self.quantile(0.2)

    @property
    def p80(self) -> float:
        return self.quantile(0.8)

    @property
    def n(self) -> int:
        return len(self.samples_ms)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_once(fn: Callable[[], Any], device: str) -> float:
    """Wall time of one synchronised call, in ms (for setup/compile work)."""
    synchronize(device)
    t0 = time.perf_counter_ns()
    fn()
    synchronize(device)
    return (time.perf_counter_ns() - t0) / 1e6


def bench(fn: Callable[[], Any], *, device: str = "cpu", min_time_s: float = 0.2, max_reps: int = 100,
          min_reps: int = 3, warmup_s: float = 0.05, max_warmup: int = 10,
          cuda_graphs: bool = False) -> Timing:
    """Time `fn()` repeatedly after warm-up; return every sample.

    Args:
        fn: a no-argument callable doing one unit of work (e.g. one forward).
        device: "cpu" or "cuda[:i]"; CUDA uses events and flushes L2 between reps.
        min_time_s: keep repeating until this much measured time (bounded by max_reps).
        warmup_s: warm-up budget (at least one call, at most max_warmup).
        cuda_graphs: capture `fn` once in a CUDA graph and time replays.
    """
    if device.startswith("cuda"):
        return _bench_cuda(fn, min_time_s, max_reps, min_reps, warmup_s, max_warmup, cuda_graphs)
    _warmup(fn, device, warmup_s, max_warmup)
    samples: list[float] = []
    total = 0.0
    while len(samples) < max_reps and (total < min_time_s * 1e3 or len(samples) < min_reps):
        ms = time_once(fn, device)
        samples.append(ms)
        total += ms
    return Timing(tuple(samples))


def _warmup(fn: Callable[[], Any], device: str, warmup_s: float, max_warmup: int) -> None:
    spent, calls = 0.0, 0
    while calls < 1 or (spent < warmup_s * 1e3 and calls < max_warmup):
        spent += time_once(fn, device)
        calls += 1


def _bench_cuda(fn: Callable[[], Any], min_time_s: float, max_reps: int, min_reps: int,
                warmup_s: float, max_warmup: int, cuda_graphs: bool) -> Timing:
    _warmup(fn, "cuda", warmup_s, max_warmup)
    if cuda_graphs:
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            fn()
        run: Callable[[], Any] = graph.replay
    else:
        run = fn
    flush = torch.empty(_L2_FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    samples: list[float] = []
    total = 0.0
    while len(samples) < max_reps and (total < min_time_s * 1e3 or len(samples) < min_reps):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        ms = start.elapsed_time(end)
        samples.append(ms)
        total += ms
    return Timing(tuple(samples))
