"""Effective density: the meter, the shared resolvers, every sparse method's `at_density`, the proxy ladder."""

from __future__ import annotations

import math

import pytest
import torch

from attnbench import density
from attnbench.presets import Preset
from attnbench.proxy.suite import DENSE_AT, PAPER, density_ladder
from attnbench.registry import METHODS, SUITES
from attnbench.spec import Workload

SPARSE = ("moba", "vmoba", "dma", "sliding_window", "gna", "neighborhood", "sparsifiner")
TARGETS = (0.125, 0.25, 0.5)
SHAPES = [(64, True, None), (96, True, None), (128, True, None), (64, False, None), (100, False, None),
          (64, False, (8, 8)), (49, False, (7, 7))]


def _w(n: int, causal: bool, spatial: tuple[int, ...] | None = None) -> Workload:
    return Workload(batch=1, heads_q=2, seq_q=n, seq_kv=n, head_dim=8, causal=causal, spatial=spatial)


# ---- the meter --------------------------------------------------------------------------------

def test_effective_density_is_the_mask_fraction_on_a_hand_built_mask():
    mask = torch.tensor([[1, 0, 0, 0],
                         [1, 1, 0, 0],
                         [0, 1, 1, 0],
                         [1, 0, 0, 1]], dtype=torch.bool)
    with density.measure() as causal:
        density.record_mask(mask, causal=True)
    assert causal.value == pytest.approx(7 / 10)  # 7 of the 10 causal pairs
    with density.measure() as full:
        density.record_mask(mask | mask.T, causal=False, batch=3, heads=2)
    assert full.value == pytest.approx(10 / 16)
    assert full.allowed == 16 * 6  # shared mask scaled to batch × heads
    with density.measure() as leaky:  # pairs above the diagonal are not allowed, so not counted
        density.record_mask(torch.ones(4, 4, dtype=torch.bool), causal=True)
    assert leaky.value == 1.0


def test_a_reference_records_what_it_attends_and_nothing_outside_measure():
    q = k = v = torch.randn(2, 3, 10, 4)
    sw = METHODS.get("sliding_window").reference.fn
    sw(q, k, v, causal=True, window=3)  # no meter open: a no-op
    with density.measure() as outer, density.measure() as inner:
        sw(q, k, v, causal=True, window=3)
    band = torch.ones(10, 10, dtype=torch.bool).tril() & ~torch.ones(10, 10, dtype=torch.bool).tril(-3)
    assert outer.value == inner.value == pytest.approx(float(band.sum()) / 55)
    assert outer.allowed == 55 * 2 * 3
    with density.measure() as dense:
        METHODS.get("mha").reference.fn(q, k, v, causal=True)
    assert dense.value is None  # a dense method records nothing


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n", [1, 7, 32])
def test_window_pairs_closed_form_matches_the_mask(n: int, causal: bool):
    from attnbench.impls.sliding_window import window_mask

    for window in range(1, n + 1):
        assert density.window_pairs(n, window, causal) == float(window_mask(n, n, window=window, causal=causal).sum())
    assert density.allowed_pairs(n, n, causal) == (n * (n + 1) / 2 if causal else n * n)


# ---- at_density: the resolver hits the target within one block, on every sparse method --------

def _one_block(name: str, p: dict, w: Workload, measured) -> float:
    """The density one step of the method's coarsest knob moves (one block of keys per query)."""
    allowed = density.allowed_pairs(w.seq_q, w.seq_kv, w.causal)
    if name == "moba":
        return p["block_size"] * w.seq_q / allowed
    if name == "vmoba":
        return math.prod(p["block"]) / w.seq_q
    if name in ("dma", "sliding_window", "sparsifiner"):
        return 2 * w.seq_q / allowed
    k = p["kernel_size"]  # NA/GNA: the densities one kernel size either side
    near = [measured({**p, "kernel_size": j, **({"stride": max(1, min(j, round(j * p["stride"] / k)))}
                                                  if name == "gna" else {})})
            for j in (k - 1, k + 1) if j >= 1]
    return max(abs(d - measured(p)) for d in near if d is not None)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"N{s[0]}-{'causal' if s[1] else 'full'}-{s[2]}")
@pytest.mark.parametrize("name", SPARSE)
def test_at_density_hits_the_target_within_one_block(name: str, shape):
    entry = METHODS.get(name)
    n, causal, spatial = shape
    w = _w(n, causal, spatial)
    base, caps = entry.spec.params(), entry.spec.capabilities
    if not (caps.causal if causal else caps.noncausal):
        pytest.skip(f"{name} has no {'causal' if causal else 'non-causal'} form")
    if spatial and len(spatial) not in caps.dims:
        pytest.skip(f"{name} takes no {len(spatial)}-D grid")

    def measured(p: dict) -> float | None:
        shaped = entry.spec.shape(w, p)
        if entry.spec.why_not(shaped, p):
            return None
        return density.probe(entry, w, p)

    for target in TARGETS:
        params = entry.spec.params(entry.spec.at_density(entry.spec.shape(w, base), target, base))
        d = measured(params)
        assert d is not None, (name, target, params)
        tol = _one_block(name, params, w, measured)
        assert abs(d - target) <= tol + 1e-9, (name, shape, target, params, d, tol)


# ---- the ladder in the proxies ----------------------------------------------------------------

def test_ladder_resolves_per_point_and_drops_a_dense_paper_default():
    entry = METHODS.get("moba")
    w = _w(64, True).replace(batch=8, heads_q=1, heads_kv=1, head_dim=16)
    points = density_ladder(entry, w, {}, (0.125, 0.5, PAPER))
    assert [o["target_density"] for _, o in points] == [0.125, 0.5]  # block 512 is one block at L=64
    assert all("dense at this length" in o["density_note"] for _, o in points)
    assert points[0][0] != points[1][0]
    sw = density_ladder(METHODS.get("sliding_window"), w, {}, (0.25, PAPER))
    assert sw[1] == ({}, {"target_density": PAPER, "paper_density": pytest.approx(0.746, abs=1e-3)})
    assert sw[1][1]["paper_density"] < DENSE_AT


def test_explicit_params_win_over_the_ladder_and_an_empty_ladder_is_off():
    entry, w = METHODS.get("sliding_window"), _w(64, True)
    (point, opts), = density_ladder(entry, w, {"window": 5}, (0.125, 0.25, PAPER))
    assert point == {"window": 5} and opts["target_density"] is None and "explicitly" in opts["density_note"]
    assert density_ladder(entry, w, {}, ()) == [({}, {})]
    (point, opts), = density_ladder(METHODS.get("moba"), w, {}, (PAPER,))  # nothing left: the defaults, with why
    assert point == {} and opts["target_density"] == PAPER and "dense at this length" in opts["density_note"]
    assert density_ladder(METHODS.get("mha"), w, {}, (0.25, PAPER)) == [({}, {})]


def test_smoke_mqar_cases_carry_the_ladder_and_the_paper_default_where_sparse():
    cases = SUITES.get("mqar").cases(Preset("smoke", {"methods": ["moba", "sliding_window", "mha", "vmoba"]}),
                                     METHODS)
    by = {}
    for c in cases:
        by.setdefault(c.method, []).append(c.option_dict.get("target_density"))
    assert by == {"moba": [0.25], "sliding_window": [0.25, PAPER], "mha": [None], "vmoba": [None]}
    moba = next(c for c in cases if c.method == "moba")
    assert moba.param_dict == {"block_size": 4, "topk": 3}
    full = SUITES.get("mqar").cases(Preset("full", {"methods": ["sliding_window"]}), METHODS)
    assert sorted({str(c.option_dict["target_density"]) for c in full}) == ["0.125", "0.25", "0.5", PAPER]


def test_densities_are_validated_settings():
    from attnbench.settings import SettingsError

    mqar = SUITES.get("mqar")
    s = mqar.settings(Preset("smoke", {"suite": {"mqar": {"densities": [0.5, "paper"]}}}))
    assert s.densities == (0.5, PAPER) and "densities" not in mqar.cases(
        Preset("smoke", {"methods": ["mha"]}), METHODS)[0].option_dict
    for bad in ([0.0], [1.5], ["dense"]):
        with pytest.raises(SettingsError):
            mqar.settings(Preset("smoke", {"suite": {"mqar": {"densities": bad}}}))


def test_latency_rows_say_how_sparse_the_kernel_really_was(tmp_path) -> None:
    """A sparse method timed at a length where its paper settings are dense (MoBA's 512-token blocks at
    N=256) records effective density 1, so the board greys it instead of reading it as MoBA's speed."""
    from attnbench import results
    from attnbench.presets import load_preset
    from attnbench.runner import Runner

    preset = load_preset("smoke", ['suites=["latency"]', 'methods=["moba","sliding_window","mha"]',
                                   'backends=["reference"]', "timing.max_reps=1", "timing.min_time_s=0.0"])
    Runner(preset, tmp_path / "out").run()
    df = results.load([tmp_path / "out"])
    dens = df[df["metric"] == "effective_density"].groupby("method")["value"].first()
    assert set(dens.index) == {"moba", "sliding_window"}  # mha records nothing: it is dense by definition
    assert dens["moba"] == 1.0
    window = METHODS.get("sliding_window").spec.params()["window"]
    assert 0 < dens["sliding_window"] < 1 and dens["sliding_window"] == pytest.approx(
        density.window_pairs(256, window, causal=False) / 256**2)
