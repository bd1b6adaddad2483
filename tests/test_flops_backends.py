"""Per-backend executed FLOPs (issue 12): each backend's analytic count against a brute-force one.

Brute force = FlopCounterMode on the backend's own call (the torch-op paths: every matmul it
really runs) or the 128×128 tile count of the dense reference mask (flex BlockMask, multi-dim
NATTEN tiles). Also: executed ≥ useful everywhere (so realisation from the counts is ≤ 1),
routing runs per call, and backends without a model report no bound.
"""

from __future__ import annotations

import pytest
import torch

from attnbench.flops import backend_flops, block_routing_flops, counted_flops, mask_flops, sim_speedup, visited_tiles
from attnbench.impls.neighborhood import na_mask, tile_permutation, workload_config
from attnbench.impls.sliding_window import window_mask
from attnbench.inputs import make_qkv
from attnbench.registry import METHODS
from attnbench.spec import Backend, Workload, run_params


def _flops(method: str, backend: str, w: Workload, params: dict):
    entry = METHODS.get(method)
    p = entry.spec.params(params)
    w = entry.spec.shape(w, p)
    return w, p, backend_flops(entry.spec, entry.impl(backend), w, p)


def _counted(method: str, backend: str, w: Workload, p: dict) -> float:
    q, k, v = make_qkv(w, seed=0)
    fn = METHODS.get(method).impl(backend).prepare(q, k, v, causal=w.causal, params=run_params(w, p))
    with torch.no_grad():
        return counted_flops(lambda: fn(q, k, v))


NA_CASES = [  # (method, grid, params): 1-D, 2-D, 3-D, stride, causal axis
    ("neighborhood", (256,), {"kernel_size": 33}),
    ("neighborhood", (16, 16), {"kernel_size": 5}),
    ("gna", (16, 16), {"kernel_size": (4, 8), "stride": (2, 4)}),
    ("gna", (4, 8, 8), {"kernel_size": (2, 4, 4), "stride": (2, 2, 2)}),
]


@pytest.mark.parametrize(("method", "grid", "params"), NA_CASES, ids=lambda x: str(x))
def test_na_native_haloed_tiles_equal_counted_matmuls(method: str, grid: tuple, params: dict) -> None:
    w = Workload(batch=1, heads_q=2, seq_q=256, seq_kv=256, head_dim=8, spatial=grid)
    w, p, fc = _flops(method, "native", w, params)
    assert fc.executed == _counted(method, "native", w, p)
    assert fc.executed >= fc.useful


@pytest.mark.parametrize(("method", "grid", "params"), NA_CASES, ids=lambda x: str(x))
def test_na_flex_compiled_blockmask_equals_brute_force_tiles(method: str, grid: tuple, params: dict) -> None:
    w = Workload(batch=2, heads_q=2, seq_q=256, seq_kv=256, head_dim=8, spatial=grid)
    w, p, fc = _flops(method, "flex_compiled", w, params)
    brute = mask_flops(w, na_mask(workload_config(w, p)), block=(128, 128))
    assert fc.executed == brute.executed and fc.useful == brute.useful


@pytest.mark.parametrize(("grid", "params"), [((16, 16), {"kernel_size": 5}),
                                              ((4, 8, 8), {"kernel_size": (2, 4, 4), "stride": (2, 2, 2)})])
def test_natten_gpu_count_is_brute_force_multi_dim_tiles(grid: tuple, params: dict) -> None:
    method = "gna" if "stride" in params else "neighborhood"
    w = Workload(batch=1, heads_q=2, seq_q=256, seq_kv=256, head_dim=8, spatial=grid)
    entry = METHODS.get(method)
    p = entry.spec.params(params)
    from attnbench.kernels.neighborhood import multi_dim_flops_of, tile_shapes

    fc = multi_dim_flops_of(entry.spec)(w.replace(device="cuda"), p)  # the model only; nothing runs on a GPU
    mask = na_mask(workload_config(w, p))
    best = min(int(visited_tiles(mask[perm][:, perm], (128, 128)).sum())
               for perm in (tile_permutation(grid, t) for t in tile_shapes(grid)))
    assert fc.executed == 4.0 * w.heads_q * best * 128 * 128 * w.head_dim
    cpu = multi_dim_flops_of(entry.spec)(w, p)  # CPU natten is eager flex: every score
    assert cpu.executed == 4.0 * w.heads_q * 256 * 256 * w.head_dim
    flat = int(visited_tiles(mask, (128, 128)).sum())
    assert sim_speedup(entry.spec, w, p) == pytest.approx(4 / best) and best <= flat


def test_sim_speedup_sees_the_multi_dim_tiling_the_flat_tiles_miss() -> None:
    """The issue's case, scaled down: blocked (8, 16) GNA windows on a 2-D grid."""
    w = Workload(batch=1, heads_q=1, seq_q=512, seq_kv=512, head_dim=8, spatial=(16, 32))
    w, p, flat = _flops("gna", "flex_compiled", w, {"kernel_size": (8, 16), "stride": (8, 16)})
    dense = 4.0 * 512 * 512 * 8
    assert sim_speedup(METHODS.get("gna").spec, w, p) == 4.0 > dense / flat.executed


@pytest.mark.parametrize("causal", [False, True])
def test_sliding_window_backends(causal: bool) -> None:
    w = Workload(batch=1, heads_q=4, heads_kv=2, seq_q=200, seq_kv=200, head_dim=8, causal=causal)
    params = {"window": 33}
    w, p, native = _flops("sliding_window", "native", w, params)
    assert native.executed == _counted("sliding_window", "native", w, p) >= native.useful
    _, _, sdpa = _flops("sliding_window", "sdpa", w, params)
    assert sdpa.executed == 4.0 * 4 * 200 * 200 * 8  # a masked SDPA computes every score
    _, _, flex = _flops("sliding_window", "flex_compiled", w, params)
    mask = window_mask(200, 200, window=33, causal=causal)
    assert flex.executed == mask_flops(w, mask).executed


def test_gna_blocked_sdpa_equals_counted() -> None:
    w = Workload(batch=1, heads_q=2, seq_q=256, seq_kv=256, head_dim=8, spatial=(16, 16))
    w, p, fc = _flops("gna", "sdpa", w, {"kernel_size": (4, 8), "stride": (4, 8)})
    assert fc.executed == _counted("gna", "sdpa", w, p) == fc.useful  # blocked: no waste


@pytest.mark.parametrize("backend", ["native", "sdpa"])
def test_moba_gathered_branches_equal_counted(backend: str) -> None:
    w = Workload(batch=2, heads_q=2, seq_q=256, seq_kv=256, head_dim=8, causal=True)
    w, p, fc = _flops("moba", backend, w, {"block_size": 32, "topk": 3})
    nblk = 8
    not_matmul = 2 * 2 * (256 * 8 + 256 * nblk)  # block-mean sums and top-k: routing the counter misses
    assert fc.executed - not_matmul == _counted("moba", backend, w, p)
    assert fc.executed >= fc.useful
    assert fc.useful - block_routing_flops(w, 32) == METHODS.get("moba").spec.flops(w, p).useful - \
        block_routing_flops(w, 32)


def test_vmoba_gathered_branches_equal_counted() -> None:
    w = Workload(batch=1, heads_q=2, seq_q=256, seq_kv=256, head_dim=8, spatial=(4, 8, 8))
    params = {"select_mode": "topk", "topk": 2, "block": (1, 4, 8)}
    w, p, fc = _flops("vmoba", "native", w, params)
    not_matmul = 2 * (256 * 8 + 256 * 8)  # 8 blocks of 32 tokens
    assert fc.executed - not_matmul == _counted("vmoba", "native", w, p)


def test_paro_native_equals_counted_and_compiled_flex_is_the_kept_blocks() -> None:
    w = Workload(batch=1, heads_q=2, seq_q=256, seq_kv=256, head_dim=8, spatial=(4, 8, 8))
    params = {"block": 32, "density": 0.3}
    w, p, fc = _flops("paro", "native", w, params)
    assert fc.executed == _counted("paro", "native", w, p) >= fc.useful
    _, _, flex = _flops("paro", "flex_compiled", w, params)
    assert flex.executed == flex.useful


@pytest.mark.parametrize("causal", [False, True])
def test_moh_sdpa_runs_every_head_native_only_the_selected(causal: bool) -> None:
    from attnbench.execute import prepare_call

    entry = METHODS.get("moh")
    w = Workload(batch=1, heads_q=4, seq_q=64, seq_kv=64, head_dim=8, causal=causal)
    p = entry.spec.params()
    sdpa = backend_flops(entry.spec, entry.impl("sdpa"), w, p)
    native = backend_flops(entry.spec, entry.impl("native"), w, p)
    assert sdpa.executed > sdpa.useful  # credited with nothing it did not run
    if causal:  # the counter's SDPA formula ignores causality; the kernel skips the upper triangle
        assert sdpa.executed < counted_flops(prepare_call(entry, Backend.SDPA, w, p).call)
        assert native.executed is None  # routing-dependent chunking: no model, so no bound
    else:
        assert sdpa.executed == counted_flops(prepare_call(entry, Backend.SDPA, w, p).call)
    if causal:
        assert native.executed is None  # routing-dependent chunking: no model, so no bound
    else:
        assert native.executed == native.useful == counted_flops(prepare_call(entry, Backend.NATIVE, w, p).call)


def test_backend_without_a_model_reports_no_bound() -> None:
    entry = METHODS.get("moba")
    w = Workload(seq_q=256, seq_kv=256, causal=True)
    fc = backend_flops(entry.spec, entry.reference, w, entry.spec.params({"block_size": 64}))
    assert fc is not None and fc.useful > 0 and fc.executed is None


def _grid_cells() -> list:
    from tests.test_correctness import WORKLOADS

    out = []
    for entry in METHODS:
        for backend, impl in entry.impls.items():
            if impl.flops is not None:
                out += [pytest.param(entry.name, backend, w, id=f"{entry.name}-{backend.value}-{w.id}")
                        for w in WORKLOADS]
    return out


@pytest.mark.parametrize(("method", "backend", "workload"), _grid_cells())
def test_executed_covers_useful_on_the_correctness_grid(method: str, backend: Backend, workload: Workload) -> None:
    """realisation = speedup / (dense / executed) can reach 1 only by skipping nothing useful."""
    entry = METHODS.get(method)
    p = entry.spec.params()
    w = entry.spec.shape(workload, p)
    if entry.why_not(Backend.REFERENCE, w, p):
        pytest.skip("method cannot run this workload")
    fc = entry.impl(backend).flops(w, p)
    if fc.executed is not None:
        assert fc.executed >= fc.useful * (1 - 1e-12)


ROUTED = [("moba", {"block_size": 16, "topk": 2}, None), ("dma", {"window": 12}, None),
          ("vmoba", {"select_mode": "topk", "topk": 2, "block": (1, 4, 4)}, (2, 8, 8))]


@pytest.mark.parametrize(("method", "params", "grid"), ROUTED, ids=[m for m, _, _ in ROUTED])
def test_staged_flex_routes_every_call(method: str, params: dict, grid: tuple | None) -> None:
    """Prepared on one input, called on another: the output is the reference's for the new input,
    so routing (and its BlockMask) runs inside the timed call, not in setup."""
    entry = METHODS.get(method)
    w = Workload(batch=1, heads_q=2, seq_q=128, seq_kv=128, head_dim=8, causal=method != "vmoba", spatial=grid)
    p = run_params(w, entry.spec.params(params))
    q1, k1, v1 = make_qkv(w, seed=1)
    q2, k2, v2 = make_qkv(w, seed=2)
    fn = entry.impl("flex").prepare(q1, k1, v1, causal=w.causal, params=p)
    ref = entry.reference.fn
    torch.testing.assert_close(fn(q2, k2, v2), ref(q2, k2, v2, causal=w.causal, **p), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(fn(q1, k1, v1), ref(q1, k1, v1, causal=w.causal, **p), atol=2e-5, rtol=1e-4)


def test_stale_routing_would_be_caught() -> None:
    """The check above can fail: MoBA's routing of input 1 applied to input 2 is not input 2's."""
    from attnbench.impls.moba import moba_mask, moba_select
    from attnbench.ops import dense_attention

    w = Workload(batch=1, heads_q=2, seq_q=128, seq_kv=128, head_dim=8, causal=True)
    (q1, k1, _), (q2, k2, v2) = make_qkv(w, seed=1), make_qkv(w, seed=2)
    stale = dense_attention(q2, k2, v2, moba_mask(moba_select(q1, k1, block_size=16, topk=2), 16))
    fresh = METHODS.get("moba").reference.fn(q2, k2, v2, causal=True, block_size=16, topk=2)
    assert not torch.allclose(stale, fresh, atol=1e-3)
