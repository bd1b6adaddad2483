"""An out-of-tree method is first-class: the fixture package `tests/plugin/attnbench_toy` registers
`toy_window` through the `attnbench.methods` entry point (a hand-written `.dist-info` on PYTHONPATH,
no install), and the CLI, the registry-wide tests, the suites and the leaderboard all pick it up.

Everything runs in subprocesses with `tests/plugin` on PYTHONPATH, so this process's registry (loaded
by conftest, plugin-free) is untouched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from attnbench import results
from attnbench.device import backend_unavailable

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_DIR = ROOT / "tests" / "plugin"
NAME = "toy_window"


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PLUGIN_DIR), env.get("PYTHONPATH", "")) if p)
    env.setdefault("ATTNBENCH_TEST_THREADS", "2")
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{tail}"
    return proc


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One smoke run of the plugin method (correctness + latency), shared by the tests below."""
    out = tmp_path_factory.mktemp("plugin") / "res"
    _run("-m", "attnbench", "run", "--suites", "correctness,latency", "--preset", "smoke", "--methods", NAME,
         "--threads", "2", "-o", str(out), "--no-report")
    return out


def test_list_shows_the_plugin_and_its_backends() -> None:
    data = json.loads(_run("-m", "attnbench", "list", "--json").stdout)
    toy = next(m for m in data["methods"] if m["name"] == NAME)
    # sdpa from the plugin module itself; flex and flex_compiled from the generic backends via its mask_mod;
    # sdpa_flash/_cudnn/_efficient (its sdpa pinned to one kernel) from the generic peers of any sdpa path
    assert set(toy["backends"]) == {"reference", "sdpa", "flex", "flex_compiled", "sdpa_flash", "sdpa_cudnn",
                                    "sdpa_efficient"}
    assert toy["defaults"] == {"window": 16} and toy["paper"]["year"] == 2020


def test_registry_wide_tests_apply_to_the_plugin() -> None:
    """The registry-driven tests, collected with the plugin loaded: naming/paper, defaults stated once,
    fused backends vs reference on the test workloads, the fused-backend rule (optional for plugins) and
    the mask_mod oracle. flex_compiled is left to the smoke run (its correctness rows): fewer compiles."""
    proc = _run("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_registry.py", "tests/test_correctness.py",
                "tests/test_reference_oracles.py",
                "-k", f"{NAME} and not flex_compiled and not sdpa_ or every_method_has_a_fused_backend",
                timeout=240)  # sdpa_flash/_cudnn/_efficient: CUDA-only, they would skip here
    summary = proc.stdout.strip().splitlines()[-1]
    assert "passed" in summary and "failed" not in summary and "skipped" not in summary, summary
    passed = int(summary.split()[0])
    assert passed >= 2 + 2 + 1 + 2, summary  # naming + defaults, sdpa and flex cells, fused rule, 2 oracles


def test_run_rows_are_ok(run_dir: Path) -> None:
    df = results.load([run_dir])
    assert set(df["method"]) == {NAME} and {"correctness", "latency"} <= set(df["suite"])
    # the correctness suite records the reference itself as skipped: it is what the others are compared with
    by_design = (df["suite"] == "correctness") & (df["backend"] == "reference") & (df["status"] == "skipped")
    elsewhere = (df["status"] == "unsupported") & df["backend"].map(lambda b: backend_unavailable(b, "cpu") is not None)
    bad = df[~by_design & ~elsewhere & (df["status"] != "ok")]  # elsewhere: GPU-only backends, with their reason
    assert bad.empty, bad[["suite", "backend", "workload_id", "status", "error"]].to_string()
    checked = df[(df["suite"] == "correctness") & (df["metric"] == "max_abs_err")]
    assert set(checked["backend"]) == {"sdpa", "flex", "flex_compiled"}
    latency = set(df.loc[df["suite"] == "latency", "backend"])
    assert {"reference", "sdpa"} <= latency and "flex" not in latency  # eager flex is not a fused kernel: timed nowhere


def test_report_site_shows_the_plugin(run_dir: Path) -> None:
    site = run_dir.parent / "site"
    _run("-m", "attnbench", "report", str(run_dir), "-o", str(site))
    pages = [p for p in site.rglob("*.html") if NAME in p.read_text(encoding="utf-8")]
    assert pages, f"no page of {site} mentions {NAME}"
    assert (site / "index.html").is_file()
