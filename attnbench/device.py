"""What machine a row was measured on, and known peaks for %-of-peak."""

from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import attnbench

# Dense tensor-core peaks (TFLOP/s, no sparsity) and HBM bandwidth (TB/s), from vendor datasheets.
GPU_PEAKS: dict[str, dict[str, float]] = {
    "H200": {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0, "bandwidth_tbs": 4.8},
    "H100 SXM": {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0, "bandwidth_tbs": 3.35},
    "H100 PCIe": {"bfloat16": 756.0, "float16": 756.0, "float32": 51.0, "bandwidth_tbs": 2.0},
    "H100": {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0, "bandwidth_tbs": 3.35},
    "B200": {"bfloat16": 2250.0, "float16": 2250.0, "float32": 80.0, "bandwidth_tbs": 8.0},
    "A100": {"bfloat16": 312.0, "float16": 312.0, "float32": 19.5, "bandwidth_tbs": 2.0},
    "L40S": {"bfloat16": 362.0, "float16": 362.0, "float32": 91.6, "bandwidth_tbs": 0.864},
    "L4": {"bfloat16": 121.0, "float16": 121.0, "float32": 30.3, "bandwidth_tbs": 0.3},
    "A10": {"bfloat16": 125.0, "float16": 125.0, "float32": 31.2, "bandwidth_tbs": 0.6},
    "RTX 4090": {"bfloat16": 165.2, "float16": 165.2, "float32": 82.6, "bandwidth_tbs": 1.0},
    "V100": {"float16": 125.0, "float32": 15.7, "bandwidth_tbs": 0.9},
    "T4": {"float16": 65.0, "float32": 8.1, "bandwidth_tbs": 0.32},
}


def peak_tflops(device_name: str, dtype: str) -> float | None:
    """Known dense peak for a GPU model name (longest matching key wins), or None."""
    for key in sorted(GPU_PEAKS, key=len, reverse=True):
        if key.lower() in device_name.lower():
            return GPU_PEAKS[key].get(dtype)
    return None


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    device_kind: str
    device_name: str
    device_capability: str
    num_threads: int
    torch_version: str
    triton_version: str
    attnbench_version: str
    git_sha: str
    hostname: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def best_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve(device: str) -> str:
    """'auto' → the best available device; an unavailable CUDA request raises."""
    if device == "auto":
        return best_device()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available (use --device cpu)")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda[:i]")
    return device


@functools.cache
def git_sha() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def triton_version() -> str:
    try:
        import triton

        return str(triton.__version__)
    except Exception:
        return ""


def capture(device: str) -> DeviceInfo:
    """Describe `device` ("cpu" or "cuda[:i]") and the software measured on it."""
    if device.startswith("cuda"):
        idx = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(idx)
        name, cap, kind = props.name, f"{props.major}.{props.minor}", "cuda"
    else:
        name, cap, kind = _cpu_name(), "", "cpu"
    return DeviceInfo(kind, name, cap, torch.get_num_threads(), torch.__version__, triton_version(),
                      attnbench.__version__, git_sha(), socket.gethostname())


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cpus)"
    except OSError:
        pass
    return platform.processor() or platform.machine()
