"""Peer backends (kernels/peers.py): what `list` says here, SDPA really pinned to one kernel, and the
argument translation of flash-attn / fla checked against stand-ins that follow their documented contracts."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from typer.testing import CliRunner

from attnbench.cli import app
from attnbench.device import backend_unavailable
from attnbench.ops import dense_attention
from attnbench.registry import METHODS
from attnbench.spec import Backend, Workload

PINNED = (Backend.SDPA_FLASH, Backend.SDPA_CUDNN, Backend.SDPA_EFFICIENT)


def _qkv(hq: int = 4, hkv: int = 4, n: int = 32, d: int = 16, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, hq, n, d, generator=g, dtype=dtype), torch.randn(1, hkv, n, d, generator=g, dtype=dtype),
            torch.randn(1, hkv, n, d, generator=g, dtype=dtype))


def test_pinned_sdpa_covers_every_functional_sdpa_method() -> None:
    have = {e.name for e in METHODS if e.spec.kind == "functional" and Backend.SDPA in e.impls}
    assert {"mha", "gqa", "mqa", "sliding_window"} <= have
    for name in have:
        assert set(PINNED) <= set(METHODS.get(name).impls), name


@pytest.mark.parametrize("backend", PINNED)
def test_pinned_sdpa_refuses_cpu_with_the_reason(backend: Backend) -> None:
    entry = METHODS.get("mha")
    why = entry.why_not(backend, Workload(dtype="bfloat16"), {})
    assert why and "needs CUDA" in why and backend.value in why


def test_peers_give_their_reason_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    gone = {"flash_attn", "flash_attn_interface", "xformers", "fla"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in gone else real(name, *a))
    w = Workload(device="cuda", dtype="bfloat16", causal=True)
    for method, backend in (("mha", "flash_attn"), ("sliding_window", "xformers"), ("linear", "fla")):
        assert METHODS.get(method).impl(backend).can_run(w, METHODS.get(method).spec.params()) == \
            f"{backend} is not installed"


def test_limits_are_reasons_once_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the machine check, each peer names the dtype / head size / mask it cannot take."""
    import attnbench.kernels.peers as peers

    monkeypatch.setattr(peers, "backend_unavailable", lambda b, device: None)
    fa = METHODS.get("mha").impl("flash_attn").can_run
    assert "float32" in fa(Workload(device="cuda", dtype="float32"), {})
    assert "head sizes" in fa(Workload(device="cuda", dtype="bfloat16", head_dim=320), {})
    assert fa(Workload(device="cuda", dtype="bfloat16", head_dim=128), {}) is None
    fla = METHODS.get("linear").impl("fla").can_run
    assert "causal" in fla(Workload(device="cuda", causal=False), {})
    assert "float64" in METHODS.get("mha").impl("xformers").can_run(Workload(device="cuda", dtype="float64"), {})


def test_list_json_reports_backend_availability_here() -> None:
    res = CliRunner().invoke(app, ["list", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    avail = data["backends"]
    assert set(avail) == {b.value for b in Backend}
    assert avail["reference"] == {"available": True, "reason": None}
    for b in PINNED:
        assert avail[b.value]["available"] is False and "needs CUDA" in avail[b.value]["reason"]
    mha = next(m for m in data["methods"] if m["name"] == "mha")
    assert mha["runs_here"]["sdpa_flash"] == avail["sdpa_flash"]["reason"]
    assert "version" in avail["triton"] and "version" in avail["flash_attn"]


# -- SDPA pinned for real: torch's CPU build has a flash kernel and no efficient / cuDNN one ------------------

def test_pinned_flash_runs_the_flash_kernel_on_cpu_and_matches_sdpa() -> None:
    entry = METHODS.get("gqa")
    q, k, v = _qkv(hq=4, hkv=1)
    out = entry.impl(Backend.SDPA_FLASH).fn(q, k, v, causal=True, groups=4)
    torch.testing.assert_close(out, entry.impl(Backend.SDPA).fn(q, k, v, causal=True, groups=4))


@pytest.mark.parametrize("method", ["mha", "sliding_window"])
def test_pinned_efficient_is_really_pinned(method: str) -> None:
    """The kernel the row names is the only one allowed: on CPU the efficient kernel is absent, so the
    call fails instead of silently falling back to math (a staged method fails in its steady state)."""
    entry = METHODS.get(method)
    impl, params = entry.impl(Backend.SDPA_EFFICIENT), entry.spec.params()
    q, k, v = _qkv()
    with pytest.raises(RuntimeError):
        impl.prepare(q, k, v, causal=False, params=params)(q, k, v)


def test_probe_reports_the_kernels_refusal() -> None:
    from attnbench.kernels.peers import _probe

    w = Workload(batch=1, heads_q=2, seq_q=32, seq_kv=32, head_dim=16, causal=True)
    assert _probe("mha", Backend.SDPA_FLASH, w, "{}") is None
    why = _probe("mha", Backend.SDPA_EFFICIENT, w, "{}")
    assert why and why.startswith("sdpa_efficient refused this call")


# -- flash-attn / fla: our layout and window translation against stand-ins of their documented contracts -----

def _fake_flash_attn_func(q, k, v, causal=False, window_size=(-1, -1), **_):
    """FA-2 contract: `[B, N, H, D]`, GQA by head groups, key j visible to query i iff
    `i + Nk − Nq − left ≤ j ≤ i + Nk − Nq + right` (bottom-right), causal ⇒ right = 0."""
    nq, nk = q.shape[1], k.shape[1]
    left, right = window_size
    right = 0 if causal else right
    i = torch.arange(nq)[:, None] + nk - nq
    j = torch.arange(nk)[None, :]
    mask = torch.ones(nq, nk, dtype=torch.bool)
    if left >= 0:
        mask &= j >= i - left
    if right >= 0:
        mask &= j <= i + right
    return dense_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask).transpose(1, 2)


@pytest.mark.parametrize(("method", "params"), [("mha", {}), ("gqa", {"groups": 2}),
                                                ("sliding_window", {"window": 9}), ("sliding_window", {"window": 8})])
@pytest.mark.parametrize("causal", [False, True])
def test_flash_attn_translation(monkeypatch: pytest.MonkeyPatch, method: str, params: dict, causal: bool) -> None:
    monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_func=_fake_flash_attn_func))
    entry = METHODS.get(method)
    q, k, v = _qkv(hq=4, hkv=4 // params.get("groups", 1))
    full = entry.spec.params(params)
    out = entry.impl(Backend.FLASH_ATTN).fn(q, k, v, causal=causal, **full)
    torch.testing.assert_close(out, entry.reference.fn(q, k, v, causal=causal, **full), atol=1e-5, rtol=1e-4)


def _fake_chunk_linear_attn(q, k, v, scale=None, normalize=True, **_):
    """fla contract: `[B, T, H, K]`, causal `o = (q·scale) Σ_{j≤i} kᵀv`, normalised by `(q·scale)·Σ_{j≤i} k`."""
    qs = q * (scale if scale is not None else q.shape[-1] ** -0.5)
    a = (qs.transpose(1, 2) @ k.transpose(1, 2).transpose(-1, -2)).tril()
    o = a @ v.transpose(1, 2)
    if normalize:
        o = o / (a.sum(-1, keepdim=True) + 1e-10)
    return o.transpose(1, 2), None


def test_fla_translation(monkeypatch: pytest.MonkeyPatch) -> None:
    fla_ops = types.SimpleNamespace(chunk_linear_attn=_fake_chunk_linear_attn)
    monkeypatch.setitem(sys.modules, "fla", types.ModuleType("fla"))
    monkeypatch.setitem(sys.modules, "fla.ops", types.ModuleType("fla.ops"))
    monkeypatch.setitem(sys.modules, "fla.ops.linear_attn", fla_ops)
    import attnbench.kernels.peers as peers

    monkeypatch.setattr(peers, "backend_unavailable", lambda b, device: None)
    entry = METHODS.get("linear")
    q, k, v = _qkv(hq=4, hkv=2)
    full = entry.spec.params()
    out = entry.impl(Backend.FLA).fn(q, k, v, causal=True, **full)
    torch.testing.assert_close(out, entry.reference.fn(q, k, v, causal=True, **full), atol=1e-5, rtol=1e-4)


def test_machine_reasons() -> None:
    assert backend_unavailable("sdpa", "cpu") is None
    assert "needs CUDA" in backend_unavailable("sdpa_cudnn", "cpu")
    assert backend_unavailable("sdpa_cudnn", "cuda") is None


# -- the GPU check's Markdown summary, built from a synthetic Parquet ------------------------------------------

def _summary_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "gpu_summary.py"
    spec = importlib.util.spec_from_file_location("gpu_summary", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_summary_from_a_synthetic_parquet(tmp_path) -> None:
    from datetime import UTC, datetime

    from attnbench.results import complete_row, write_part

    ctx = dict(run_id="r1", created_at=datetime(2026, 1, 1, tzinfo=UTC), suite="latency", batch=1, heads=16,
               kv_heads=16, seq_len=16384, seq_kv=16384, head_dim=128, dtype="bfloat16", causal=True,
               mode="fwd", device_name="NVIDIA H200", params="{}")
    rows = []

    def case(method, backend, ms, tflops, pct, real=None, n=16384):
        cid = f"{method}-{backend}-{n}"
        metrics = {"latency_ms": ms, "tflops": tflops, "pct_peak": pct, "speedup_vs_dense": 3.0}
        if real is not None:
            metrics["realisation"] = real
        for metric, value in metrics.items():
            rows.append(complete_row(dict(case_id=cid, method=method, backend=backend, metric=metric,
                                          value=value, status="ok"), **{**ctx, "seq_len": n, "seq_kv": n}))

    case("mha", "sdpa", 12.0, 400.0, 40.4)
    case("mha", "sdpa_flash", 10.0, 480.0, 48.5)
    case("sliding_window", "flex_compiled", 2.5, 50.0, 5.1, 0.40)
    case("sliding_window", "triton", 2.0, 62.5, 6.3, 0.50)
    case("linear", "triton", 1.0, 9.0, 0.9, n=4096)  # no mha row at N=4096: the suite's own ratio
    rows.append(complete_row(dict(case_id="sw-fa", method="sliding_window", backend="flash_attn", metric="status",
                                  status="unsupported", error="flash_attn is not installed"), **ctx))
    rows.append(complete_row(dict(case_id="moh-tr", method="moh", backend="triton", metric="status",
                                  status="error", error="RuntimeError: boom | pipe\nsecond line"), **ctx))
    write_part(tmp_path / "results", rows, run_id="r1")
    out = tmp_path / "summary.md"
    assert _summary_module().main([str(tmp_path / "results"), "-o", str(out)]) == 0
    text = out.read_text()
    assert "# GPU check: NVIDIA H200" in text
    sw = next(line for line in text.splitlines() if line.startswith("| sliding_window | 16384"))
    assert "| triton |" in sw and "5.00× (sdpa_flash)" in sw and "| 6.3 |" in sw and "| 0.50 |" in sw
    mha = next(line for line in text.splitlines() if line.startswith("| mha | 16384"))
    assert "| sdpa_flash |" in mha and "1.00× (sdpa_flash)" in mha
    assert "| sliding_window | flash_attn | unsupported | 1 | flash_attn is not installed |" in text
    assert "RuntimeError: boom \\| pipe |" in text and "second line" not in text
    assert "| triton | 2 | 35.75 | 6.3 |" in text
    lin = next(line for line in text.splitlines() if line.startswith("| linear | 4096"))
    assert "3.00× (sdpa, interleaved)" in lin
