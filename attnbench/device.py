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


# -- `attnbench env` and `attnbench list`: what this machine can run (not recorded in rows) ----------------
PEER_LIBRARIES = {"natten": "natten", "flash_attn": "flash-attn", "xformers": "xformers",
                  "fla": "flash-linear-attention", "triton": "triton", "transformers": "transformers",
                  "lm_eval": "lm-eval", "ray": "ray"}  # import name → distribution name
_PEER_BACKENDS = ("natten", "flash_attn", "xformers", "fla", "triton")  # backends named after their library
_SDPA_PINNED = {"sdpa_flash": "flash", "sdpa_cudnn": "cuDNN", "sdpa_efficient": "memory-efficient"}


def package_version(import_name: str) -> str:
    """Installed version of a library by import name, or "not installed"."""
    import importlib.metadata

    for dist in dict.fromkeys((PEER_LIBRARIES.get(import_name, import_name), import_name)):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "not installed"


def triton_interpreted() -> bool:
    """Whether Triton kernels run in its CPU interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


def _installed(module: str) -> bool:
    """Can `module` be imported here? (A finder that refuses it, e.g. a blocked import, counts as no.)"""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def backend_unavailable(backend: object, device: str) -> str | None:
    """Why `backend` cannot run on `device` on this machine at all (library missing, needs CUDA), or None.

    Machine-level only: whether a method's workload fits the backend is its `Impl.can_run`.
    """
    b, cuda = str(backend), device.startswith("cuda")
    if b in _PEER_BACKENDS and not _installed(b):
        if not (b == "flash_attn" and _installed("flash_attn_interface")):
            return f"{b} is not installed"
    if b in _SDPA_PINNED and not cuda:
        return f"{b} needs CUDA (torch's {_SDPA_PINNED[b]} SDPA kernel is CUDA-only)"
    if b in ("flash_attn", "xformers") and not cuda:
        return f"{b} needs CUDA"
    if b == "fla" and not cuda:
        return "fla needs CUDA (its Triton ops find no CPU driver, even with TRITON_INTERPRET=1)"
    if b == "triton" and not cuda and not triton_interpreted():
        return "triton needs CUDA (or TRITON_INTERPRET=1 to run its interpreter on CPU)"
    return None


def backend_availability(device: str) -> dict[str, dict[str, object]]:
    """Per backend: can it run on `device` here, why not, and its library's version (`list --json`)."""
    from attnbench.spec import Backend

    lib = {"flash_attn": "flash_attn", "xformers": "xformers", "fla": "fla", "triton": "triton",
           "natten": "natten"}
    out: dict[str, dict[str, object]] = {}
    for b in Backend:
        why = backend_unavailable(b, device)
        row: dict[str, object] = {"available": why is None, "reason": why}
        if b.value in lib:
            row["version"] = package_version(lib[b.value])
        out[b.value] = row
    return out


def runs_here(entry: object, backend: object, device: str) -> str | None:
    """Why `entry`'s `backend` cannot run on `device` (a small default workload), or None."""
    from attnbench.kernelsuite import natural_form
    from attnbench.spec import Workload

    if (why := backend_unavailable(backend, device)) is not None:
        return why
    try:
        params = entry.spec.params({})  # type: ignore[attr-defined]
        w = entry.spec.shape(natural_form(entry, Workload(device=device)), params)  # type: ignore[arg-type,attr-defined]
        return entry.impl(backend).can_run(w, params)  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 — a check that fails is a reason, not a crash of `list`
        return f"check failed: {type(exc).__name__}: {exc}"


def git_dirty() -> bool | None:
    """Whether the package's git checkout has uncommitted changes (None: not a git checkout)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain"], capture_output=True,
                             cwd=Path(__file__).resolve().parent, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def _gpu_driver() -> dict[str, object]:
    """Driver version and GPU clocks (MHz) from pynvml, else from `nvidia-smi`; {} without either."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            drv = pynvml.nvmlSystemGetDriverVersion()
            out: dict[str, object] = {"driver_version": drv.decode() if isinstance(drv, bytes) else str(drv)}
            clocks = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                clocks.append({"sm_mhz": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
                               "sm_max_mhz": pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM),
                               "mem_mhz": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM)})
            out["gpu_clocks"] = clocks
            return out
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 — not installed, or no NVIDIA driver
        pass
    try:
        q = "driver_version,clocks.sm,clocks.max.sm,clocks.mem"
        res = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {}
    rows = [[x.strip() for x in line.split(",")] for line in res.stdout.splitlines() if line.strip()]
    if res.returncode != 0 or not rows:
        return {}
    return {"driver_version": rows[0][0],
            "gpu_clocks": [{"sm_mhz": r[1], "sm_max_mhz": r[2], "mem_mhz": r[3]} for r in rows if len(r) == 4]}


def environment(device: str) -> dict[str, object]:
    """What a run records (`capture`), plus Python, CUDA/cuDNN/driver, clocks, peers and git state."""
    info = capture(device).as_dict()
    info["python_version"] = platform.python_version()
    info["cuda_version"] = torch.version.cuda or "none"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    info["cudnn_version"] = str(cudnn) if cudnn else "none"
    info.update(_gpu_driver())
    info["peer_versions"] = {name: package_version(name) for name in PEER_LIBRARIES}
    info["git_dirty"] = git_dirty()
    return info
