"""`fault_method`: dense attention that misbehaves on demand — a test fixture for the runner's reliability.

Registered through the `attnbench.methods` entry point (`../attnbench_fault-0.1.dist-info/`), found by
putting `tests/faultplugin` on PYTHONPATH. The `fault` param says what a call does before attending, either
one name for every call or per sequence length, `"32:exit0,40:segfault"` (other lengths run healthy):

    none              nothing (a healthy case)
    raise             raise RuntimeError
    oom_message       raise the RuntimeError PyTorch's CPU allocator raises for a huge allocation
    exit0 / exit3     sys.exit(0) / sys.exit(3)
    os_exit           os._exit(0) (no cleanup, no exception)
    print_no_newline  write to stdout without a trailing newline (and flush)
    print_json        print a JSON-looking line to stdout
    segfault          read address 0 through ctypes
    sigsegv           os.kill(own pid, SIGSEGV)
    sigkill           os.kill(own pid, SIGKILL)
    hang              sleep forever (Python-level: interruptible)
    native_sleep      sleep 60 s inside one C call (Python signal handlers wait until it returns)

Environment: ATTNBENCH_FAULT_PIDFILE names a file each call appends `<pid> <fault>` to (the tests check
which cases ran, and that no worker outlives its parent); ATTNBENCH_FAULT_WORKER_DELAY makes an isolated
worker sleep that many seconds while importing this plugin (a slow start-up, e.g. a heavy torch import).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

import torch

from attnbench.ops import causal_mask, dense_attention
from attnbench.registry import register_method
from attnbench.spec import AttentionSpec, Capabilities, Paper

FAULTS = ("none", "raise", "oom_message", "exit0", "exit3", "os_exit", "print_no_newline", "print_json",
          "segfault", "sigsegv", "sigkill", "hang", "native_sleep")

if os.environ.get("ATTNBENCH_FAULT_WORKER_DELAY") and sys.argv[0].endswith("worker.py"):
    time.sleep(float(os.environ["ATTNBENCH_FAULT_WORKER_DELAY"]))


def fault_for(spec: str, seq_len: int) -> str:
    """The fault of a call at `seq_len`: `spec` is one fault, or `N:fault` pairs separated by commas."""
    if ":" not in spec:
        return spec
    pairs = dict(item.split(":", 1) for item in spec.split(","))
    return pairs.get(str(seq_len), "none")


def check_fault(w: object, params: dict) -> str | None:
    spec = params["fault"]
    names = [item.partition(":")[2] if ":" in spec else item for item in str(spec).split(",")]
    bad = [n for n in names if n not in FAULTS]
    return f"fault_method: unknown fault {bad[0]!r}; one of {FAULTS}" if bad else None


SPEC = AttentionSpec(
    name="fault_method",
    title="Fault injection (test fixture)",
    paper=Paper("Attention Is All You Need", 2017, "1706.03762"),
    family="dense",
    defaults={"fault": "none"},
    capabilities=Capabilities(gqa=True),
    check=check_fault,
)


def inject(fault: str) -> None:
    """Do what `fault` names (most never return)."""
    if path := os.environ.get("ATTNBENCH_FAULT_PIDFILE"):
        with open(path, "a") as fh:
            fh.write(f"{os.getpid()} {fault}\n")
    if fault == "raise":
        raise RuntimeError("injected fault")
    if fault == "oom_message":
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
                           "you tried to allocate 1099511627776 bytes.")
    if fault in ("exit0", "exit3"):
        sys.exit(int(fault[-1]))
    if fault == "os_exit":
        os._exit(0)
    if fault == "print_no_newline":
        sys.stdout.write("noise without a newline")
        sys.stdout.flush()
    if fault == "print_json":
        print('[{"metric": "fake"}]', flush=True)
    if fault == "segfault":
        ctypes.string_at(0)
    if fault == "sigsegv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if fault == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "hang":
        while True:
            time.sleep(0.05)
    if fault == "native_sleep":
        ctypes.CDLL(None).sleep(60)


@register_method(SPEC)
def fault_method(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                 fault: str = "none") -> torch.Tensor:
    """Dense softmax attention, after `inject(fault_for(fault, Nq))`."""
    inject(fault_for(fault, q.shape[-2]))
    return dense_attention(q, k, v, causal_mask(q.shape[-2], k.shape[-2], q.device) if causal else None)
