"""A new user's first minutes: --version, a --help that does not wait for torch, a dry run that shows the
plan and writes nothing, an ETA on the progress bar, `list` saying what runs here, and `env` saying what
is installed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.progress import TimeRemainingColumn
from typer.testing import CliRunner

import attnbench
from attnbench.cli import app

ROOT = Path(__file__).resolve().parent.parent
cli = CliRunner()
TINY = ["--preset", "smoke", "--methods", "mha", "--backends", "reference,sdpa",
        "--set", "shapes.seq_lens=[32]", "--set", "shapes.heads=2", "--set", "shapes.head_dim=8",
        "--set", "suite.latency.seq_lens=[32]", "--set", "timing.min_time_s=0.25", "--set", "timing.max_reps=5",
        "--set", "timing.warmup_s=0.05", "--no-report", "--suites"]  # the suites follow


def test_version() -> None:
    res = cli.invoke(app, ["--version"])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"attnbench {attnbench.__version__}"


def test_help_never_imports_torch() -> None:
    code = """
import sys
from typer.testing import CliRunner
from attnbench.cli import app
for args in (["--help"], ["run", "--help"], ["list", "--help"], ["env", "--help"], ["--version"]):
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, (args, res.output)
assert "torch" not in sys.modules, "help imported torch"
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stdout + res.stderr


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path: Path) -> None:
    out, site = tmp_path / "res", tmp_path / "site"
    res = cli.invoke(app, ["run", *TINY, "flops,latency", "-o", str(out), "--site", str(site), "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output)
    assert not out.exists() and not site.exists()
    suites = {s["suite"]: s for s in plan["suites"]}
    assert set(suites) == {"flops", "latency"} and plan["cases"] == sum(s["cases"] for s in plan["suites"])
    lat = suites["latency"]
    assert lat["methods"] == ["mha"] and set(lat["backends"]) <= {"reference", "sdpa"}
    assert lat["budget"] == {"min_time_s": 0.25, "max_reps": 5, "warmup_s": 0.05}
    assert lat["estimate_s"] == pytest.approx(lat["cases"] * 0.3)
    assert all("N32" in w for w in lat["workloads"]) and plan["done"] == 0
    text = cli.invoke(app, ["run", *TINY, "flops,latency", "-o", str(out), "--dry-run"])
    assert text.exit_code == 0 and "latency" in text.output and "nothing was run" in text.output
    assert not out.exists()


def test_dry_run_with_resume_counts_done_cases(tmp_path: Path) -> None:
    out = tmp_path / "res"
    ran = cli.invoke(app, ["run", *TINY, "flops", "-o", str(out)])
    assert ran.exit_code == 0, ran.output
    parts = sorted(out.rglob("*.parquet"))
    res = cli.invoke(app, ["run", *TINY, "flops,latency", "-o", str(out), "--resume", "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    suites = {s["suite"]: s for s in json.loads(res.output)["suites"]}
    assert suites["flops"]["done"] == suites["flops"]["cases"] > 0 and suites["latency"]["done"] == 0
    assert suites["flops"]["estimate_s"] == 0
    assert sorted(out.rglob("*.parquet")) == parts


def test_json_without_dry_run_is_refused(tmp_path: Path) -> None:
    res = cli.invoke(app, ["run", *TINY, "flops,latency", "-o", str(tmp_path / "r"), "--json"])
    assert res.exit_code == 2 and "--dry-run" in res.output


def test_progress_bar_has_an_eta(tmp_path: Path) -> None:
    from attnbench.presets import load_preset
    from attnbench.runner import Runner

    runner = Runner(load_preset("smoke", ["suites=[\"flops\"]"]), tmp_path)
    assert any(isinstance(c, TimeRemainingColumn) for c in runner.progress().columns)


def test_list_says_what_runs_here(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "natten" else real(name, *a))
    res = cli.invoke(app, ["list", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    mha = next(m for m in data["methods"] if m["name"] == "mha")
    assert set(mha["runs_here"]) == set(mha["backends"]) and mha["runs_here"]["reference"] is None
    peers = [m["runs_here"]["natten"] for m in data["methods"] if "natten" in m["runs_here"]]
    assert peers and all(r == "natten is not installed" for r in peers)
    table = cli.invoke(app, ["list"], terminal_width=400)
    assert table.exit_code == 0 and "runs here" in table.output and "✗ natten" in table.output


def test_cuda_only_backend_does_not_run_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from attnbench.device import runs_here

    class Entry:  # only the backend name matters before the entry is consulted
        pass

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the interpreter would run triton on CPU
    assert runs_here(Entry(), "triton", "cpu").startswith(("triton is not installed", "triton needs CUDA"))


def test_env_reports_python_cuda_peers_and_git() -> None:
    res = cli.invoke(app, ["env", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["python_version"] == ".".join(map(str, sys.version_info[:3]))
    assert {"cuda_version", "cudnn_version", "git_dirty", "device_kind", "torch_version"} <= set(info)
    peers = info["peer_versions"]
    assert set(peers) == {"natten", "flash_attn", "xformers", "fla", "triton", "transformers", "lm_eval", "ray"}
    assert all(isinstance(v, str) and v for v in peers.values())
    assert info["git_dirty"] in (True, False, None)


def test_isolated_cases_fork_from_one_warm_zygote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--isolate` on CPU imports torch once per run: each case's worker is forked by the run's zygote
    (the isolation guarantees themselves are tests/test_reliability.py's, which go through it too)."""
    from attnbench import zygote
    from attnbench.presets import load_preset
    from attnbench.runner import Runner

    spawned, started = [], []
    real_spawn, real_init = zygote.Zygote.spawn, zygote.Zygote.__init__

    def spawn(self: zygote.Zygote, *args: object) -> object:
        child = real_spawn(self, *args)
        spawned.append(child.pid if child else None)
        return child

    def init(self: zygote.Zygote, *args: object) -> None:
        real_init(self, *args)
        started.append(self.proc)

    monkeypatch.setattr(zygote.Zygote, "spawn", spawn)
    monkeypatch.setattr(zygote.Zygote, "__init__", init)
    monkeypatch.delenv("ATTNBENCH_ZYGOTE", raising=False)
    ov = ['suites=["flops"]', 'methods=["mha"]', 'backends=["reference","sdpa"]', "shapes.seq_lens=[32]",
          "shapes.heads=2", "shapes.head_dim=8", "device=\"cpu\""]
    runner = Runner(load_preset("smoke", ov), tmp_path / "out", isolate=True)
    summary = runner.run()
    assert summary.failures == {} and summary.statuses["ok"] > 0
    assert len(started) == 1 and len(spawned) == summary.planned and all(spawned)
    assert runner.zygote is False and started[0].poll() is not None, "the zygote ends with the run"
