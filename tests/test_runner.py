"""Runner: status rows for faults, isolation, time limits, sharding, resume after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnbench import results
from attnbench.presets import load_preset
from attnbench.registry import SUITES
from attnbench.runner import PlanError, Runner

FAST = ["shapes.seq_lens=[32]", "shapes.heads=2", "shapes.head_dim=8", "timing.min_time_s=0.0",
        "timing.max_reps=3", "timing.warmup_s=0.0"]


def make_runner(tmp_path: Path, *extra: str, **kw: object) -> Runner:
    preset = load_preset("smoke", [*FAST, 'suites=["flops"]', 'methods=["mha"]', *extra])
    return Runner(preset, tmp_path / "out", **kw)  # type: ignore[arg-type]


def test_run_writes_one_part_per_case(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    summary = runner.run()
    df = results.load([tmp_path / "out"])
    parts = list((tmp_path / "out").glob("part-*.parquet"))
    assert len(parts) == summary.planned == df["case_id"].nunique()
    assert set(df["status"]) == {"ok"}
    assert (df["device_kind"] == "cpu").all() and (df["run_id"] == runner.run_id).all()


def test_faults_become_status_rows_and_the_run_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    suite = SUITES.get("flops")
    real = suite.run

    def flaky(case):  # noqa: ANN001, ANN202
        if case.backend == "sdpa":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")
        if case.backend == "flex":
            raise ZeroDivisionError("boom")
        return real(case)

    monkeypatch.setattr(suite, "run", flaky)
    make_runner(tmp_path).run()
    df = results.load([tmp_path / "out"])
    status = df.groupby("backend")["status"].first().to_dict()
    assert status == {"sdpa": "oom", "flex": "error", "reference": "ok", "flex_compiled": "ok"}
    err = df.loc[df.backend == "flex", "error"].iloc[0]
    assert err.startswith("ZeroDivisionError: boom @ ") and "\n" not in err


def test_timeout_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    suite = SUITES.get("flops")
    monkeypatch.setattr(suite, "run", lambda case: time.sleep(5))
    make_runner(tmp_path, 'backends=["reference"]', timeout_s=0.3).run()
    df = results.load([tmp_path / "out"])
    assert df["status"].tolist() == ["timeout"]


def test_isolated_cases_match_in_process(tmp_path: Path) -> None:
    make_runner(tmp_path, 'backends=["reference","sdpa"]', isolate=True, timeout_s=120).run()
    df = results.load([tmp_path / "out"])
    assert set(df["status"]) == {"ok"} and set(df["backend"]) == {"reference", "sdpa"}
    assert df.loc[df.metric == "flops_useful", "value"].nunique() == 1


def test_unsupported_is_recorded_with_reason(tmp_path: Path) -> None:
    make_runner(tmp_path, 'suites=["latency"]', 'backends=["flex"]', 'shapes.modes=["bwd"]',
                "suite.latency.exclude=[]").run()  # smoke leaves eager flex out of latency; put it back
    df = results.load([tmp_path / "out"])
    assert df["status"].tolist() == ["unsupported"]
    assert "no backward on CPU" in df["error"].iloc[0]


def test_shards_partition_the_plan(tmp_path: Path) -> None:
    whole = {c.case_id for c in make_runner(tmp_path).plan()}
    parts = [{c.case_id for c in make_runner(tmp_path, shard=(i, 3)).plan()} for i in (1, 2, 3)]
    assert set().union(*parts) == whole and sum(map(len, parts)) == len(whole)


def test_bad_selection_fails_before_running(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="did you mean .*mha"):
        make_runner(tmp_path, 'methods=["mah"]').plan()
    with pytest.raises(PlanError, match="unknown suite 'latncy'; did you mean latency"):
        make_runner(tmp_path, 'suites=["latncy"]').plan()
    assert not (tmp_path / "out").exists()


def test_resume_after_kill_completes_without_duplicates(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [sys.executable, "-m", "attnbench", "run", "--preset", "smoke", "--suites", "latency,flops",
            "--methods", "mha", "--no-report", "-o", str(out), "--set", "timing.min_time_s=0.3",
            "--set", "shapes.seq_lens=[64,128]"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("part-*.parquet"))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = results.load([out])  # every part written so far is readable
    assert not list(out.glob(".*.tmp"))
    # The case in flight at the kill left its marker: a plain --resume would record it as a crash (an OOM kill
    # looks the same); --retry-crashed runs it again.
    done = subprocess.run([*args, "--resume", "--retry-crashed"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    after = results.load([out], latest_only=False)
    per_case = after.groupby("case_id")["run_id"].nunique()
    assert (per_case == 1).all(), "a finished case was run twice"
    assert set(before["case_id"]) <= set(after["case_id"])
    assert after["case_id"].nunique() == len(make_plan(args))


def make_plan(args: list[str]) -> list:
    preset = load_preset("smoke", ['suites=["latency","flops"]', 'methods=["mha"]', "timing.min_time_s=0.3",
                                   "shapes.seq_lens=[64,128]"])
    return Runner(preset, Path("/nonexistent")).plan()


def test_single_form_methods_run_in_their_natural_form(tmp_path: Path) -> None:
    preset = load_preset("smoke", [*FAST, 'suites=["latency"]', 'methods=["mha","moba"]',
                                   'shapes.causal=[false]'])
    cases = Runner(preset, tmp_path).plan()
    assert {c.workload.causal for c in cases if c.method == "moba"} == {True}
    assert {c.workload.causal for c in cases if c.method == "mha"} == {False}
    off = load_preset("smoke", [*FAST, 'suites=["latency"]', 'methods=["moba"]', 'shapes.causal=[false]',
                                "suite.latency.natural_mask=false"])
    assert {c.workload.causal for c in Runner(off, tmp_path).plan()} == {False}
