"""Triton backends on CPU through `TRITON_INTERPRET=1` (tiny shapes): each kernel against its method's
reference, each kernel's work-skipping invariant, and the reason they give without the interpreter."""

from __future__ import annotations

import pytest
import torch

from attnbench.registry import METHODS, SUITES
from attnbench.spec import Backend, Workload, params_json
from attnbench.suite import Case, ResolvedCase

pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[triton]')")


@pytest.fixture
def interpret(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run Triton kernels in its CPU interpreter (kernel modules re-import under it on first use)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _qkv(b: int, hq: int, hkv: int, nq: int, nk: int, d: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, hq, nq, d, generator=g), torch.randn(b, hkv, nk, d, generator=g),
            torch.randn(b, hkv, nk, d, generator=g))


def _run(method: str, q, k, v, causal: bool, params: dict) -> torch.Tensor:
    entry = METHODS.get(method)
    full = entry.spec.params(params)
    return entry.impl(Backend.TRITON).prepare(q, k, v, causal=causal, params=full)(q, k, v)


FUNCTIONAL = [  # (method, params, (B, Hq, Hkv, Nq, Nk), causal); N past one 32-row tile, one ragged
    ("linear", {}, (1, 2, 2, 48, 48), True),
    ("linear", {}, (1, 2, 1, 40, 40), False),
    ("linear", {"feature_map": "identity", "normalize": False}, (1, 2, 1, 24, 40), True),  # cached prefix
    ("sliding_window", {"window": 9}, (1, 2, 1, 48, 48), True),
    ("sliding_window", {"window": 16}, (1, 1, 1, 40, 40), False),
    ("sliding_window", {"window": 8}, (1, 1, 1, 24, 40), True),  # Nq < Nk, bottom-right
    ("neighborhood", {"kernel_size": 7}, (1, 1, 1, 40, 40), False),
    ("neighborhood", {"kernel_size": 16}, (1, 2, 1, 48, 48), True),
    ("moba", {"block_size": 16, "topk": 2}, (1, 1, 1, 48, 48), True),
    ("moba", {"block_size": 12, "topk": 3}, (1, 1, 1, 40, 40), True),  # ragged last block
    ("paro", {"density": 0.5, "block": 16}, (1, 1, 1, 64, 64), False),
    ("paro", {"density": 0.5, "block": 16, "qk_bits": 8, "pv_bits": 4}, (1, 1, 1, 64, 64), False),  # int dots
]


@pytest.mark.parametrize(("method", "params", "shape", "causal"), FUNCTIONAL,
                         ids=[f"{m}-{'-'.join(f'{k}{v}' for k, v in p.items())}-{s}-{c}" for m, p, s, c in FUNCTIONAL])
def test_kernel_matches_reference(interpret: None, method: str, params: dict, shape: tuple, causal: bool) -> None:
    q, k, v = _qkv(*shape)
    entry = METHODS.get(method)
    ref = entry.reference.fn(q, k, v, causal=causal, **entry.spec.params(params))
    out = _run(method, q, k, v, causal, params)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, atol=1e-4 if params.get("normalize", True) else 5e-4, rtol=1e-4)


GRADS = [("sliding_window", {"window": 9}, (1, 2, 1, 40, 40), True),  # GQA: dk/dv summed over the group
         ("sliding_window", {"window": 8}, (1, 1, 1, 24, 40), True),  # Nq < Nk: keys no row sees get 0
         ("neighborhood", {"kernel_size": 7}, (1, 2, 2, 40, 40), False)]


@pytest.mark.parametrize(("method", "params", "shape", "causal"), GRADS, ids=[f"{m}-{s}" for m, _, s, _ in GRADS])
def test_backward_matches_reference_grads(interpret: None, method: str, params: dict, shape: tuple,
                                          causal: bool) -> None:
    q, k, v = (t.requires_grad_() for t in _qkv(*shape))
    do = torch.randn(shape[0], shape[1], shape[3], 16, generator=torch.Generator().manual_seed(3))  # [B, Hq, Nq, D]
    entry = METHODS.get(method)
    ref = entry.reference.fn(q, k, v, causal=causal, **entry.spec.params(params))
    out = _run(method, q, k, v, causal, params)
    for got, want in zip(torch.autograd.grad(out, (q, k, v), do), torch.autograd.grad(ref, (q, k, v), do),
                         strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_inputs_store_their_dtype(interpret: None, dtype: str) -> None:
    q, k, v = (t.to(getattr(torch, dtype)) for t in _qkv(1, 1, 1, 32, 32))
    out = _run("sliding_window", q, k, v, True, {"window": 8})
    ref = METHODS.get("sliding_window").reference.fn(q.float(), k.float(), v.float(), causal=True, window=8)
    assert out.dtype == q.dtype
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize(("method", "causal", "mode"), [("linear", True, "fwd"), ("sliding_window", False, "fwd_bwd"),
                                                        ("moh", True, "fwd"), ("moba", True, "fwd"),
                                                        ("neighborhood", True, "fwd")])
def test_correctness_suite_passes_the_triton_backend(interpret: None, method: str, causal: bool, mode: str) -> None:
    """Through the harness: can_run, staging, grads (fwd_bwd) and (MoH, a layer) the module's `step`."""
    w = Workload(batch=1, heads_q=2, heads_kv=2, seq_q=32, seq_kv=32, head_dim=16, causal=causal, mode=mode)
    entry = METHODS.get(method)
    assert entry.why_not(Backend.TRITON, entry.spec.shape(w, entry.spec.params()), entry.spec.params()) is None
    rows = SUITES.get("correctness").run(ResolvedCase.resolve(
        Case("correctness", method, "triton", w, params_json({})), METHODS))
    assert rows and all(r.status == "ok" for r in rows), [r.error for r in rows if r.status != "ok"]


@pytest.mark.parametrize("causal", [False, True])
def test_moh_step_matches_reference(interpret: None, causal: bool) -> None:
    from attnbench.impls.moh import gated_attention

    q, k, v = _qkv(2, 4, 4, 40, 40)
    gates = torch.rand(2, 40, 4, generator=torch.Generator().manual_seed(1))
    gates[..., 2:] *= torch.rand(2, 40, 2, generator=torch.Generator().manual_seed(2)) < 0.4
    out = METHODS.get("moh").impl(Backend.TRITON).fn(q, k, v, gates, causal=causal, n_shared=2)
    torch.testing.assert_close(out, gated_attention(q, k, v, gates, causal=causal, n_shared=2), atol=1e-5, rtol=1e-4)


# -- the work each kernel skips is never read: poisoned (NaN) inputs there leave the output finite ----------

def test_sliding_window_never_reads_tiles_outside_the_band(interpret: None) -> None:
    q, k, v = _qkv(1, 1, 1, 96, 96)
    clean = METHODS.get("sliding_window").reference.fn(q, k, v, causal=True, window=9)
    v_bad = v.clone()
    v_bad[..., 64:, :] = float("nan")  # tiles of 32 keys: rows 0–31 only visit keys 0–31
    out = _run("sliding_window", q, k, v_bad, True, {"window": 9})
    assert torch.isfinite(out[..., :32, :]).all()
    torch.testing.assert_close(out[..., :32, :], clean[..., :32, :], atol=1e-5, rtol=1e-4)
    assert torch.isnan(out[..., 64:, :]).all()  # the poison is real: rows that need those keys see it


def test_moh_skips_the_rows_of_unselected_heads(interpret: None) -> None:
    from attnbench.impls.moh import gated_attention

    q, k, v = _qkv(1, 4, 4, 32, 32)
    gates = torch.ones(1, 32, 4)
    gates[0, ::2, 3] = 0.0  # head 3 (routed): every other token skips it
    q_bad = q.clone()
    q_bad[0, 3, ::2] = float("nan")  # queries of the skipped (token, head) pairs
    out = METHODS.get("moh").impl(Backend.TRITON).fn(q_bad, k, v, gates, causal=True, n_shared=2)
    assert torch.isfinite(out).all() and (out[0, 3, ::2] == 0).all()
    torch.testing.assert_close(out, gated_attention(q, k, v, gates, causal=True, n_shared=2), atol=1e-5, rtol=1e-4)


def test_moba_never_reads_unselected_blocks(interpret: None) -> None:
    q, k, v = _qkv(1, 1, 1, 48, 48)
    v_bad = v.clone()
    v_bad[..., :16, :] = float("nan")  # block 0; with top-1 every query attends its own block only
    out = _run("moba", q, k, v_bad, True, {"block_size": 16, "topk": 1})
    assert torch.isnan(out[..., :16, :]).all() and torch.isfinite(out[..., 16:, :]).all()


def test_linear_kernel_splits_the_value_dim(interpret: None) -> None:
    """D = 40 runs as three 16-wide value slices per head (and a padded feature dim)."""
    q, k, v = _qkv(1, 1, 1, 20, 20, d=40)
    ref = METHODS.get("linear").reference.fn(q, k, v, causal=True)
    torch.testing.assert_close(_run("linear", q, k, v, True, {}), ref, atol=1e-5, rtol=1e-4)


def test_linear_kernel_equals_the_recurrent_form(interpret: None) -> None:
    """The paper's RNN view: chunked state passing gives the token-by-token recurrence."""
    from attnbench.kernels.linear import linear_recurrent

    q, k, v = _qkv(1, 2, 1, 40, 40)
    torch.testing.assert_close(_run("linear", q, k, v, True, {}), linear_recurrent(q, k, v), atol=1e-5, rtol=1e-4)


# -- reasons ------------------------------------------------------------------------------------------------

def test_without_the_interpreter_cpu_gives_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for method in ("linear", "sliding_window", "neighborhood", "moh", "moba", "paro"):
        entry = METHODS.get(method)
        w = entry.spec.shape(Workload(seq_q=64, seq_kv=64, causal=method != "paro"), entry.spec.params())
        why = entry.why_not(Backend.TRITON, w, entry.spec.params())
        assert why and "TRITON_INTERPRET=1" in why and "CUDA" in why, (method, why)


def test_limits_are_reasons(interpret: None) -> None:
    entry = METHODS.get("sliding_window")
    p = entry.spec.params()
    assert "float64" in entry.why_not(Backend.TRITON, Workload(dtype="float64"), p)
    assert entry.why_not(Backend.TRITON, Workload(mode="bwd"), p) is None  # it has a backward
    lin = METHODS.get("linear")
    assert "forward only" in lin.why_not(Backend.TRITON, Workload(mode="bwd"), lin.spec.params())
    na = METHODS.get("neighborhood")
    assert "dilation" in na.why_not(Backend.TRITON, Workload(seq_q=64, seq_kv=64),
                                    na.spec.params({"dilation": 2}))
    paro = METHODS.get("paro")
    assert "power-of-two" in paro.why_not(Backend.TRITON, paro.spec.shape(Workload(seq_q=48, seq_kv=48), {}),
                                          paro.spec.params({"block": 24}))
    assert "1-D" in na.why_not(Backend.TRITON, Workload(seq_q=64, seq_kv=64, spatial=(8, 8)),
                               na.spec.params({"dims": 2}))
