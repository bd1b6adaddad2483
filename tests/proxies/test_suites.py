"""Proxy suites: cases and applicability, tiny-budget runs, and the spec's sanity values for mha.

The sanity tests train to the smoke budgets (minus the wall cap) and are marked slow; on a quiet
2-core machine each takes 20–40 s, several times that when the cores are shared.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from attnbench.metrics import suite_table
from attnbench.presets import Preset
from attnbench.registry import METHODS, SUITES, MethodEntry
from attnbench.settings import SettingsError
from attnbench.spec import AttentionSpec, Backend, Capabilities, Paper
from attnbench.suite import Case, ResolvedCase, Row

PROXIES = ("mqar", "niah", "icl_regression", "image_cls")
NO_CAP = 1e9

TINY: dict[str, dict[str, Any]] = {
    "mqar": dict(n_train=256, n_test=64, steps=8, eval_every=4, vocab=128, seq_len=[32], kv_pairs=[[2, 4]]),
    "niah": dict(steps=6, min_len=16, max_len=32, eval_lens=[32, 48], eval_depths=[0.0, 1.0], eval_samples=8,
                 d_model=16, batch_size=4),
    "icl_regression": dict(steps=6, eval_prompts=64, eval_ks=[3, 10], n_examples=10, batch_size=16),
    "image_cls": dict(dataset="digits", n_train=128, digits_epochs=1, batch_size=32, d_model=16),
}


def one_case(suite: str, method: str = "mha", params: dict[str, Any] | None = None, **settings: Any) -> Case:
    """The one case of `method` (the density ladder off unless `densities` is given)."""
    section: dict[str, Any] = {"methods": [method], "densities": [], **settings}
    if params:
        section["params"] = {method: params}
    cases = SUITES.get(suite).cases(Preset("smoke", {"suite": {suite: section}}), METHODS)
    assert len(cases) == 1, cases
    return cases[0]


def run(suite: str, case: Case) -> list[Row]:
    """Run a case the way the runner does: resolved once, then handed to the suite."""
    return SUITES.get(suite).run(ResolvedCase.resolve(case, METHODS))


def metrics(rows: list[Row]) -> dict[str, float]:
    return {r.metric: r.value for r in rows if not r.extra}


def _fake(**caps: Any) -> MethodEntry:
    spec = AttentionSpec(name="fake", title="fake", paper=Paper("x", 2020), family="dense",
                         capabilities=Capabilities(**caps))
    return MethodEntry(spec)


@pytest.mark.parametrize("suite", PROXIES)
def test_cases_for_every_registered_method(suite):
    s = SUITES.get(suite)
    cases = s.cases(Preset("smoke", {}), METHODS)
    assert {c.method for c in cases} == {e.name for e in METHODS if Backend.REFERENCE in e.impls}
    assert all(c.backend == "reference" and c.workload.mode == "fwd_bwd" and c.preset == "smoke"
               for c in cases)
    assert len({c.case_id for c in cases}) == len(cases)
    assert s.applies_to(METHODS.get("mha"), Backend.REFERENCE) is None


def test_applies_to_gives_reasons():
    mqar, image = SUITES.get("mqar"), SUITES.get("image_cls")
    assert "no backward" in mqar.applies_to(_fake(backward=False), Backend.REFERENCE)
    assert "causal" in mqar.applies_to(_fake(causal=False), Backend.REFERENCE)
    assert "causal only" in image.applies_to(_fake(noncausal=False), Backend.REFERENCE)
    assert "1-D" in mqar.applies_to(_fake(dims=(2,)), Backend.REFERENCE)
    assert image.applies_to(_fake(dims=(2,)), Backend.REFERENCE) is None


def test_grid_methods_get_the_patch_grid():
    grid = [e for e in METHODS if 2 in e.spec.capabilities.dims and e.name != "mha"]
    if not grid:
        pytest.skip("no 2-D method registered")
    case = one_case("image_cls", grid[0].name)
    assert case.workload.spatial == (7, 7) or case.workload.spatial == (4, 4)  # fashion-mnist or digits
    assert one_case("image_cls").workload.spatial is None  # mha's reference takes no grid


def test_backend_selection_is_a_setting():
    case = one_case("mqar", backends=["sdpa"])
    assert case.backend == "sdpa"


@pytest.mark.parametrize("suite", PROXIES)
def test_tiny_budget_run_on_mha(suite):
    rows = run(suite, one_case(suite, wall_cap_s=NO_CAP, **TINY[suite]))
    m = metrics(rows)
    table = suite_table([SUITES.get(suite)])
    assert not [r.metric for r in rows if table.get(r.metric) is None]  # every emitted metric is declared
    assert m["truncated"] == 0.0 and m["steps"] >= 1 and m["wall_s"] > 0
    head = {"mqar": "mqar_acc", "niah": "niah_acc_in_range", "icl_regression": "icl_mse",
            "image_cls": "top1"}[suite]
    assert m[head] is not None and m[head] >= 0
    assert "effective_density" not in m  # a dense method records nothing
    assert all(r.extra.keys() <= {"seq_len", "seq_kv"} for r in rows)  # extras must be schema columns
    if suite == "mqar":
        assert {"mqar_acc_k2", "mqar_acc_k4"} <= m.keys()
    if suite == "niah":
        cells = [r for r in rows if r.metric.startswith("niah_acc_depth")]
        assert len(cells) == 4 and {r.extra["seq_len"] for r in cells} == {32, 48}
        assert "niah_acc_extrap" in m
    if suite == "icl_regression":
        curve = {r.extra["seq_len"] for r in rows if r.metric == "icl_curve_gd1"}
        assert curve == {3, 10}
        assert {"icl_mse/gd1", "icl_kq_diag_ratio"} <= m.keys()
    if suite == "image_cls":
        # patch embedding alone: 2 · tokens · patch² · d per image; the blocks add more
        assert m["flops_per_image"] > 2 * 16 * 2 * 2 * 16


def test_truncation_is_reported():
    rows = run("mqar", one_case("mqar", **{**TINY["mqar"], "wall_cap_s": 0.0}))
    assert metrics(rows)["truncated"] == 1.0


def test_mqar_lr_sweep_reports_max():
    case = one_case("mqar", wall_cap_s=NO_CAP, **{**TINY["mqar"], "lrs": [1e-3, 3e-3]})
    m = metrics(run("mqar", case))
    assert m["mqar_acc"] == max(m["mqar_acc_lr0.001"], m["mqar_acc_lr0.003"])


def test_run_is_reproducible():
    case = one_case("icl_regression", wall_cap_s=NO_CAP, **TINY["icl_regression"])
    a, b = (metrics(run("icl_regression", case)) for _ in range(2))
    assert a["icl_mse"] == b["icl_mse"] and a["train_loss"] == b["train_loss"]


# -- sanity values from the spec (smoke budgets, no wall cap) ----------------------------------
@pytest.mark.slow
def test_sanity_mqar_mha_and_sliding_window():
    mha = metrics(run("mqar", one_case("mqar", wall_cap_s=NO_CAP)))
    assert mha["mqar_acc"] >= 0.99, mha
    if "sliding_window" not in METHODS:
        pytest.skip("sliding_window is not registered")
    win = metrics(run("mqar", one_case("mqar", "sliding_window", {"window": 8}, wall_cap_s=NO_CAP,
                                       steps=int(mha["steps"]))))
    assert win["mqar_acc"] < 0.5 and win["mqar_acc"] < mha["mqar_acc"] - 0.4, win


@pytest.mark.slow
def test_sanity_icl_mha_reaches_one_step_gd():
    m = metrics(run("icl_regression", one_case("icl_regression", wall_cap_s=NO_CAP)))
    assert m["icl_mse"] <= 1.25 * m["icl_mse_gd1"], m
    assert m["icl_mse"] < 0.3 * m["icl_mse_zero"], m


@pytest.mark.slow
def test_sanity_image_mha_well_above_chance():
    m = metrics(run("image_cls", one_case("image_cls", wall_cap_s=NO_CAP, n_train=3_000, epochs=3,
                                          digits_epochs=30)))
    assert m["top1"] >= 0.5, m  # chance is 0.1


# -- every registered method trains in every proxy that applies (two steps, tiny sizes) --------
TWO_STEPS = {
    "mqar": {**TINY["mqar"], "steps": 2, "n_train": 64, "n_test": 16},
    "niah": {**TINY["niah"], "steps": 2, "eval_samples": 2, "eval_depths": [0.5]},
    "icl_regression": {**TINY["icl_regression"], "steps": 2, "eval_prompts": 16, "eval_ks": [10]},
    "image_cls": {**TINY["image_cls"], "n_train": 32, "batch_size": 16},
}


@pytest.mark.parametrize("suite", list(TWO_STEPS))
@pytest.mark.parametrize("method", METHODS.names())
def test_method_trains_in_proxy(method, suite):
    """Cells the runner would skip (applies_to / why_not give a reason) are skipped with it."""
    s = SUITES.get(suite)
    rc = ResolvedCase.resolve(one_case(suite, method, wall_cap_s=NO_CAP, **TWO_STEPS[suite]), METHODS)
    why = s.applies_to(rc.entry, rc.backend) or rc.why_not()
    if why:
        pytest.skip(why)
    m = metrics(s.run(rc))
    assert m["steps"] >= 1 and math.isfinite(m["train_loss"])


@pytest.mark.parametrize("suite,method", [("mqar", "sliding_window"), ("niah", "sliding_window"),
                                          ("icl_regression", "dma"), ("image_cls", "neighborhood")])
def test_proxy_rows_record_the_effective_density_of_the_resolved_mask(suite, method):
    """A ladder point resolves the method's params at the task length; the row's effective_density is
    what the reference attended at evaluation (static masks: exactly the probe's count at that length)."""
    from attnbench import density

    case = one_case(suite, method, wall_cap_s=NO_CAP, **{**TWO_STEPS[suite], "densities": [0.25]})
    assert case.option_dict["target_density"] == 0.25 and case.param_dict  # resolved, not the defaults
    rc = ResolvedCase.resolve(case, METHODS)
    rows = SUITES.get(suite).run(rc)
    table = suite_table([SUITES.get(suite)])
    assert table.get("effective_density").unit == "ratio"
    got = metrics(rows)["effective_density"]
    assert got == pytest.approx(density.probe(rc.entry, rc.workload, rc.params), abs=1e-12)
    assert abs(got - 0.25) < 0.2  # within a block of the target at these tiny lengths


def test_explicit_top_level_backend_selection_is_honoured():
    cases = SUITES.get("niah").cases(Preset("smoke", {"methods": ["mha"], "backends": ["sdpa"]}), METHODS)
    assert [c.backend for c in cases] == ["sdpa"]
    cases = SUITES.get("niah").cases(Preset("smoke", {"methods": ["mha"], "backends": ["*"]}), METHODS)
    assert [c.backend for c in cases] == ["reference"]


@pytest.mark.parametrize("method", ["gqa", "dha"])
def test_grouped_methods_get_the_fewest_extra_heads_at_the_same_width(method):
    """MQAR's 1-head model: a grouped method trains with more, narrower heads and says why."""
    mha, case = one_case("mqar"), one_case("mqar", method)
    assert mha.workload.heads_q == 1 and "heads_note" not in mha.option_dict
    w, entry = case.workload, METHODS.get(method)
    assert w.heads_q > 1 and w.d_model == mha.workload.d_model
    assert "trained with" in case.option_dict["heads_note"]
    params = entry.spec.params(case.param_dict)
    assert entry.why_not(Backend.REFERENCE, entry.spec.shape(w, params), params) is None
    assert entry.why_not(Backend.REFERENCE, entry.spec.shape(w.replace(heads_q=w.heads_q - 1, heads_kv=w.heads_q - 1,
                                                                      head_dim=w.d_model // (w.heads_q - 1)),
                                                            params), params) is not None


def test_unfittable_methods_keep_their_own_reason():
    case = one_case("image_cls", "paro")  # N=49 is not a multiple of its block, whatever the heads
    assert "heads_note" not in case.option_dict


def test_niah_keyed_variants_are_cases_with_their_own_metrics():
    variants = [{}, {"needles": 2, "queries": 2}]
    cases = SUITES.get("niah").cases(Preset("smoke", {"suite": {"niah": {"methods": ["mha"], **TINY["niah"],
                                                                          "min_len": 32, "max_len": 48,
                                                                          "eval_lens": [48, 64],
                                                                          "variants": variants}}}), METHODS)
    assert len(cases) == 2 and len({c.case_id for c in cases}) == 2
    m = metrics(run("niah", next(c for c in cases if c.option_dict["needles"] == 2)))
    assert {"niah_k2v1q2_acc_in_range", "niah_k2v1q2_acc_extrap"} <= m.keys() and "niah_acc_in_range" not in m


def test_icl_full_tier_runs_he_heads_and_garg_with_curriculum():
    cases = SUITES.get("icl_regression").cases(Preset("full", {"methods": ["mha"]}), METHODS)
    seed0 = [c for c in cases if c.seed == 0]
    assert sorted(c.workload.heads_q for c in seed0 if c.option_dict["format"] == "concat") == [1, 2, 4, 8]
    garg = [c for c in seed0 if c.option_dict["format"] == "interleaved"]
    assert len(garg) == 1 and garg[0].option_dict["curriculum"]["dims"][:2] == [5, 20]
    assert garg[0].workload.d_model == 256 and garg[0].option_dict["dim"] == 20


def test_icl_interleaved_curriculum_run_has_its_own_metrics():
    case = one_case("icl_regression", **{**TINY["icl_regression"], "wall_cap_s": NO_CAP, "format": "interleaved",
                                        "dim": 4, "noise_var": 0.0, "head_width": 8, "n_heads": 2, "pos": "learned",
                                        "curriculum": {"dims": [2, 4, 1, 2], "points": [3, 10, 2, 2]}})
    rows = run("icl_regression", case)
    m = metrics(rows)
    assert {"icl_garg_mse", "icl_garg_mse_knn3", "icl_garg_mse_averaging", "icl_garg_mse/gd1"} <= m.keys()
    assert "icl_mse" not in m and m["icl_garg_mse_zero"] == pytest.approx(1.0, rel=0.15)  # E[y²]/d = 1
    assert {r.extra["seq_len"] for r in rows if r.metric == "icl_garg_curve_knn3"} == {3, 10}


def test_niah_full_tier_runs_rulers_four_variants():
    cases = SUITES.get("niah").cases(Preset("full", {"methods": ["mha"]}), METHODS)
    shapes = {(c.option_dict["needles"], c.option_dict["values"], c.option_dict["queries"]) for c in cases}
    assert shapes == {(1, 1, 1), (4, 1, 1), (1, 2, 1), (4, 1, 2)} and len(cases) == 4 * 3  # × 3 seeds


def test_eval_lengths_a_method_cannot_run_are_left_out_not_fatal():
    """neighborhood's 7-token kernel cannot run ICL's 4-token prompt (k=3): that curve point is skipped."""
    case = one_case("icl_regression", "neighborhood", **{**TWO_STEPS["icl_regression"], "eval_ks": [3, 10]},
                    wall_cap_s=NO_CAP)
    rows = run("icl_regression", case)
    assert {r.extra["seq_len"] for r in rows if r.metric == "icl_curve_model"} == {10}
    assert "icl_mse" in metrics(rows)


@pytest.mark.parametrize("suite", [*PROXIES, "hallucination"])
def test_unknown_or_mistyped_section_keys_are_refused_with_the_valid_ones(suite):
    s = SUITES.get(suite)
    with pytest.raises(SettingsError, match=rf"suite\.{suite}: unknown key\(s\) 'stepz'; valid: .*seeds"):
        s.cases(Preset("smoke", {"suite": {suite: {"stepz": 3}}}), METHODS)
    with pytest.raises(SettingsError, match=rf"suite\.{suite}\.seeds"):
        s.cases(Preset("smoke", {"suite": {suite: {"seeds": "zero"}}}), METHODS)


def test_variants_are_validated_like_the_section():
    with pytest.raises(SettingsError, match=r"suite\.niah\.variants\[1\]: unknown key\(s\) 'needle'"):
        SUITES.get("niah").cases(Preset("smoke", {"suite": {"niah": {"variants": [{}, {"needle": 2}]}}}), METHODS)
    with pytest.raises(SettingsError, match="seq_len .* and kv_pairs .* must pair up"):
        SUITES.get("mqar").cases(Preset("smoke", {"suite": {"mqar": {"seq_len": [64, 128]}}}), METHODS)


def test_tiers_and_shapes_defaults():
    """smoke/quick/full tiers (gpu → full); of the kernel `[shapes]` keys only `params` (`--param`) reaches a
    proxy, and the suite's own `params` replace it."""
    mqar = SUITES.get("mqar")
    assert mqar.settings(Preset("quick", {})).seq_len == (64, 128)
    assert mqar.settings(Preset("gpu", {})).vocab == 8192
    p = Preset("smoke", {"methods": ["sliding_window"], "suite": {"mqar": {"steps": 11}},
                         "shapes": {"seq_lens": [9], "params": {"sliding_window": {"window": 3}}}})
    assert mqar.settings(p).steps == 11 and mqar.settings(p).seq_len == (64,)
    (case,) = mqar.cases(p, METHODS)
    assert case.param_dict == {"window": 3} and case.option_dict["steps"] == 11
    own = Preset("smoke", {**p.data, "suite": {"mqar": {"params": {"sliding_window": {"window": 8}}}}})
    assert [c.param_dict for c in mqar.cases(own, METHODS)] == [{"window": 8}]


@pytest.mark.parametrize("dataset", ["fashion-mnist", "digits"])
def test_missing_image_data_is_skipped_not_error(dataset: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain install without an optional data source records `skipped` with the reason, never `error`."""
    from attnbench.proxy import data as proxydata

    def missing(*a: Any, **kw: Any) -> Any:
        raise (FileNotFoundError("no such file: train-images-idx3-ubyte.gz") if dataset == "fashion-mnist"
               else ModuleNotFoundError("No module named 'sklearn'"))

    monkeypatch.setattr(proxydata, "fashion_mnist" if dataset == "fashion-mnist" else "digits", missing)
    s = SUITES.get("image_cls")
    preset = Preset("smoke", {"suite": {"image_cls": {**TINY["image_cls"], "dataset": dataset, "methods": ["mha"]}}})
    rows = s.run(ResolvedCase.resolve(s.cases(preset, METHODS)[0], METHODS))
    assert [r.status for r in rows] == ["skipped"] and "data unavailable" in rows[0].error
