"""Sliding-window invariants (spec card methods-efficient §14, FA-2 window convention)."""

from __future__ import annotations

import pytest
import torch

from attnbench.flops import mask_flops
from attnbench.impls.mha import mha
from attnbench.impls.neighborhood import na_config, na_mask
from attnbench.impls.sliding_window import SPEC, sliding_window, window_flops, window_mask
from attnbench.registry import METHODS
from attnbench.spec import Backend, Workload

FUSED = [Backend.SDPA, Backend.NATIVE, Backend.FLEX]


def qkv(nq: int = 40, nk: int = 40, hq: int = 2, hkv: int = 2, d: int = 8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, hq, nq, d, generator=g, dtype=dtype),
            *(torch.randn(2, hkv, nk, d, generator=g, dtype=dtype) for _ in range(2)))


def run(backend: Backend, q, k, v, *, causal: bool, window: int) -> torch.Tensor:
    impl = METHODS.get("sliding_window").impl(backend)
    return impl.prepare(q, k, v, causal=causal, params={"window": window})(q, k, v)


@pytest.mark.parametrize("backend", [Backend.REFERENCE, *FUSED])
def test_causal_window_covering_the_sequence_is_causal_dense(backend: Backend) -> None:
    q, k, v = qkv()
    torch.testing.assert_close(run(backend, q, k, v, causal=True, window=40), mha(q, k, v, causal=True))


@pytest.mark.parametrize("backend", [Backend.REFERENCE, *FUSED])
@pytest.mark.parametrize("causal", [False, True])
def test_window_of_one_returns_v(backend: Backend, causal: bool) -> None:
    q, k, v = qkv()
    torch.testing.assert_close(run(backend, q, k, v, causal=causal, window=1), v)


@pytest.mark.parametrize("window", [1, 5, 16, 40])
def test_causal_rows_see_min_i_plus_1_w_keys(window: int) -> None:
    n = 40
    counts = window_mask(n, n, window=window, causal=True).sum(-1)
    assert counts.tolist() == [min(i + 1, window) for i in range(n)]
    # FA-2 window_size=(w-1, 0); attention-gym's `q - kv <= w'` is w' = w - 1 here.
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    assert torch.equal(window_mask(n, n, window=window, causal=True), (j <= i) & (i - j <= window - 1))


@pytest.mark.parametrize("window", [1, 6, 7])
def test_noncausal_band_is_symmetric_radius_w_over_2(window: int) -> None:
    n, r = 30, window // 2
    counts = window_mask(n, n, window=window, causal=False).sum(-1)
    assert counts.tolist() == [min(i + r, n - 1) - max(i - r, 0) + 1 for i in range(n)]
    assert counts.max() == 2 * r + 1


@pytest.mark.parametrize("window", [3, 9])
def test_causal_swa_equals_causal_na_1d(window: int) -> None:
    cfg = na_config(32, True, {"kernel_size": window, "dilation": 1})
    assert torch.equal(window_mask(32, 32, window=window, causal=True), na_mask(cfg))


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize(("nq", "nk", "causal"), [(24, 56, True), (24, 56, False), (56, 24, True),
                                                  (150, 150, True), (150, 150, False)])
def test_fused_match_reference_gqa_and_bottom_right_alignment(backend: Backend, nq: int, nk: int,
                                                              causal: bool) -> None:
    q, k, v = qkv(nq, nk, hq=4, hkv=2)
    expected = sliding_window(q, k, v, causal=causal, window=9)
    torch.testing.assert_close(run(backend, q, k, v, causal=causal, window=9), expected)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("backend", [Backend.SDPA, Backend.NATIVE])
def test_grads_match_reference(backend: Backend, causal: bool) -> None:
    grads = []
    for b in (Backend.REFERENCE, backend):
        q, k, v = (t.requires_grad_() for t in qkv(dtype=torch.float64))
        out = run(b, q, k, v, causal=causal, window=7)
        grads.append(torch.autograd.grad((out * out).sum(), (q, k, v)))
    for got, ref in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_reference_fp64(causal: bool) -> None:
    q, k, v = (t.requires_grad_() for t in qkv(8, 8, hq=1, hkv=1, d=4, dtype=torch.float64))
    fn = lambda q, k, v: sliding_window(q, k, v, causal=causal, window=3)
    assert torch.autograd.gradcheck(fn, (q, k, v))


@pytest.mark.parametrize(("nq", "nk", "window", "causal"),
                         [(256, 256, 65, True), (300, 300, 64, False), (100, 300, 17, True),
                          (300, 100, 17, True), (129, 129, 129, True)])
def test_flops_useful_pairs_and_executed_tiles(nq: int, nk: int, window: int, causal: bool) -> None:
    w = Workload(batch=2, heads_q=4, heads_kv=2, seq_q=nq, seq_kv=nk, head_dim=16, causal=causal)
    got = window_flops(w, {"window": window})
    assert got == mask_flops(w, window_mask(nq, nk, window=window, causal=causal), block=(128, 128))
    if causal and nq == nk:
        assert got.useful == 4 * 2 * 4 * 16 * sum(min(i + 1, window) for i in range(nq))


def test_check_rejects_impossible_windows() -> None:
    w = Workload(seq_q=64, seq_kv=64)
    assert SPEC.why_not(w, {"window": 64}) is None
    assert "larger than the sequence" in SPEC.why_not(w, {"window": 65})
    assert "positive integer" in SPEC.why_not(w, {"window": 0})


@pytest.mark.parametrize("causal", [True, False])
def test_recorded_density_is_the_window_count(causal: bool) -> None:
    from attnbench import density
    from attnbench.impls.sliding_window import at_density

    n = 96
    for target in (0.125, 0.25, 0.5):
        window = at_density(Workload(seq_q=n, seq_kv=n, causal=causal), target, SPEC.params())["window"]
        assert causal or window % 2 == 1  # an even non-causal window adds no key
        q = k = v = torch.randn(1, 2, n, 8)
        with density.measure() as meter:
            sliding_window(q, k, v, causal=causal, window=window)
        want = density.window_pairs(n, window, causal) / density.allowed_pairs(n, n, causal)
        assert meter.value == pytest.approx(want) and abs(want - target) <= n / density.allowed_pairs(n, n, causal)
