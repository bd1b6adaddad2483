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
    return bench_interleaved([fn], device=device, min_time_s=min_time_s, max_reps=max_reps,
                             min_reps=min_reps, warmup_s=warmup_s, max_warmup=max_warmup,
                             cuda_graphs=cuda_graphs)[0]


def bench_interleaved(fns: list[Callable[[], Any]], *, device: str = "cpu", min_time_s: float = 0.2,
                      max_reps: int = 100, min_reps: int = 3, warmup_s: float = 0.05, max_warmup: int = 10,
                      cuda_graphs: bool = False) -> list[Timing]:
    """Time several callables in alternating rounds (A B A B …), so machine noise hits all alike.

    The repetition budget (`min_time_s`, `max_reps`) is driven by the first callable.
    """
    cuda = device.startswith("cuda")
    runs = [_capture(fn, device, warmup_s, max_warmup, cuda and cuda_graphs) for fn in fns]
    flush = torch.empty(_L2_FLUSH_BYTES, dtype=torch.uint8, device=device) if cuda else None
    samples: list[list[float]] = [[] for _ in fns]
    total = 0.0
    while len(samples[0]) < max_reps and (total < min_time_s * 1e3 or len(samples[0]) < min_reps):
        for run, out in zip(runs, samples, strict=True):
            out.append(_sample_cuda(run, flush) if flush is not None else time_once(run, device))
        total += samples[0][-1]
    return [Timing(tuple(s)) for s in samples]


def _capture(fn: Callable[[], Any], device: str, warmup_s: float, max_warmup: int,
             graph: bool) -> Callable[[], Any]:
    """Warm `fn` up; with `graph`, capture it in a CUDA graph and return the replay."""
    spent, calls = 0.0, 0
    while calls < 1 or (spent < warmup_s * 1e3 and calls < max_warmup):
        spent += time_once(fn, device)
        calls += 1
    if not graph:
        return fn
    cuda_graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    with torch.cuda.graph(cuda_graph):
        fn()
    return cuda_graph.replay


def _sample_cuda(run: Callable[[], Any], flush: torch.Tensor) -> float:
    flush.zero_()  # evict L2 so every repetition starts cold, as real layers do
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    end.synchronize()
    return float(start.elapsed_time(end))
