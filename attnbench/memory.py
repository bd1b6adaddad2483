"""Peak memory of one call: CUDA allocator stats, or the kernel's resettable peak RSS on CPU.

On CPU the measurement runs in a worker process (spawned once, reused) with glibc's mmap
threshold pinned, so freed buffers go back to the OS and the next case's peak is its own.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

_WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
_pool: ProcessPoolExecutor | None = None


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def cpu_peak_supported() -> str | None:
    """Why the CPU peak-RSS measurement is unavailable here, or None."""
    if not Path("/proc/self/clear_refs").exists():
        return "peak RSS reset needs Linux /proc/self/clear_refs"
    return None


def peak_rss_above_baseline(fn: Callable[[], Any]) -> int:
    """Bytes the process's RSS peaked above its level just before `fn()` (Linux)."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _status_kb("VmRSS")
    fn()
    return max(0, _status_kb("VmHWM") - base) * 1024


def cuda_peak_above_baseline(fn: Callable[[], Any]) -> int:
    """Bytes `max_memory_allocated` rose above what was allocated before `fn()`."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - base)


def in_worker(target: Callable[[str], Any], arg: str, timeout_s: float | None = None) -> Any:
    """Run module-level `target(arg)` in the persistent spawned worker and return its result."""
    global _pool
    if _pool is None:
        saved = {k: os.environ.get(k) for k in _WORKER_ENV}
        os.environ.update(_WORKER_ENV)
        try:
            _pool = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"),
                                        initializer=torch.set_num_threads,
                                        initargs=(torch.get_num_threads(),))
            _pool.submit(int, 0).result()  # start it while the environment is set
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    try:
        return _pool.submit(target, arg).result(timeout=timeout_s)
    except Exception:
        shutdown_worker()  # a broken or hung worker is replaced on the next call
        raise


def shutdown_worker() -> None:
    global _pool
    if _pool is not None:
        _pool.shutdown(wait=False, cancel_futures=True)
        _pool = None
