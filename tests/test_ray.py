"""`attnbench run --executor ray`: the same rows as a local run (one part per case, written by the driver),
`--resume` skips done cases, a worker killed mid-case is an `error` row and the run finishes.

One local Ray (2 CPUs, no dashboard) serves the module. Its workers get `tests/faultplugin` on PYTHONPATH
(set before `ray.init`, so the raylet passes it on); this process's registry stays plugin-free, so the
run that needs the fault plugin is a subprocess that joins the same cluster with `--address`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from attnbench import executors, results
from attnbench.cli import app

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parent.parent
FAULT_DIR = ROOT / "tests" / "faultplugin"
SMOKE = ["run", "--preset", "smoke", "--suites", "flops,correctness", "--methods", "mha,sliding_window",
         "--set", "shapes.seq_lens=[32]", "--set", "shapes.heads=2", "--set", "shapes.head_dim=8",
         "--threads", "1", "--no-report"]
# Columns that differ between two runs of the same cases: timings, when and where, and the run itself.
VOLATILE = {"run_id", "created_at", "value", "p20", "p80", "samples", "hostname", "n"}
cli = CliRunner()


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray for this module; yields its address (GCS)."""
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "PYTHONPATH")}
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(FAULT_DIR), saved["PYTHONPATH"]) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def smoke(cluster: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The smoke subset run locally and through Ray (the module's Ray stays up: the executor did not start it)."""
    base = tmp_path_factory.mktemp("smoke")
    for name, extra in (("local", []), ("ray", ["--executor", "ray"])):
        res = cli.invoke(app, [*SMOKE, "-o", str(base / name), *extra])
        assert res.exit_code == 0, res.output
    assert ray.is_initialized()
    return base / "local", base / "ray"


def stable(folder: Path) -> pd.DataFrame:
    df = results.load([folder])
    keep = [c for c in df.columns if c not in VOLATILE]
    return df[keep].sort_values(["case_id", "metric"]).reset_index(drop=True).astype(str)


def test_ray_rows_match_the_local_run(smoke: tuple[Path, Path]) -> None:
    local, remote = smoke
    parts = list(remote.glob("part-*.parquet"))
    df = results.load([remote])
    assert len(parts) == df["case_id"].nunique() == results.load([local])["case_id"].nunique() == 27
    assert df.groupby("case_id")["run_id"].nunique().max() == 1 and df["run_id"].nunique() == 1
    pd.testing.assert_frame_equal(stable(local), stable(remote))
    assert set(df["hostname"]) == {socket.gethostname()}  # the worker's node (one node here)
    ok = df["status"] == "ok"
    assert ok.any() and set(df.loc[~ok, "status"]) <= {"skipped", "unsupported"}


def test_resume_under_ray_skips_done_cases(smoke: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(smoke[1], out)
    df = results.load([out])
    flops = set(df.loc[df["suite"] == "flops", "case_id"])
    for part in out.glob("part-*.parquet"):  # forget the flops cases
        if set(results.load([part])["case_id"]) <= flops:
            part.unlink()
    done = len(results.done_case_ids(out))  # finished ok: skipped cases run again, as locally
    res = cli.invoke(app, [*SMOKE, "-o", str(out), "--executor", "ray", "--resume"])
    assert res.exit_code == 0, res.output
    assert f"27 cases ({done} already done)" in res.output
    assert f"[{27 - done}/{27 - done}]" in res.output and f"[{28 - done}/" not in res.output
    again = results.load([out])
    assert set(again.loc[again["suite"] == "flops", "run_id"]) != set(df["run_id"])  # rerun, a new run id
    pd.testing.assert_frame_equal(stable(out), stable(smoke[0]))


def test_a_worker_killed_mid_case_is_an_error_row(cluster: str, tmp_path: Path) -> None:
    lens = "[32,40]"
    args = ["--preset", "smoke", "--suites", "latency", "--methods", "fault_method", "--backends", "reference",
            "--set", f"shapes.seq_lens={lens}", "--set", f"suite.latency.seq_lens={lens}", "--set",
            "shapes.heads=2", "--set", "shapes.head_dim=8", "--set", "timing.max_reps=2", "--set",
            "timing.min_time_s=0", "--no-report", "--threads", "1", "--param", 'fault_method.fault="32:sigkill"',
            "--executor", "ray", "--address", cluster, "-o", str(tmp_path / "out")]
    env = {**os.environ, "PYTHONPATH": os.environ["PYTHONPATH"], "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "attnbench", "run", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr[-3000:]
    df = results.load([tmp_path / "out"])
    got = {int(n): (g["status"].iloc[0], g["error"].iloc[0]) for n, g in df.groupby("seq_len")}
    assert got[40][0] == "ok"
    assert got[32][0] == "error" and "ray worker died mid-case" in got[32][1], got[32]
    assert len(list((tmp_path / "out").glob("part-*.parquet"))) == 2
    assert ray.is_initialized()  # the subprocess disconnected; the cluster it joined is still up


def test_executor_choices_are_checked_before_anything_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    for extra, message in ((["--executor", "dask"], "unknown executor 'dask'; valid: local, ray"),
                           (["--address", "auto"], "--address is the Ray cluster address: it needs --executor ray")):
        res = cli.invoke(app, [*SMOKE, "-o", str(out), *extra])
        assert res.exit_code == 2 and message in res.output, res.output
    real = importlib.util.find_spec
    monkeypatch.setattr(executors.importlib.util, "find_spec",
                        lambda name, *a: None if name == "ray" else real(name, *a))
    res = cli.invoke(app, [*SMOKE, "-o", str(out), "--executor", "ray"])
    assert res.exit_code == 2 and "needs ray: pip install 'attnbench[ray]'" in res.output, res.output
    assert not out.exists()
