"""Nothing lost, nothing falsely green: a case that exits, crashes, hangs or prints cannot take a run down
or corrupt its results, stop signals keep finished parts and leave no worker behind, a run with failed
cases exits non-zero, and bad input is refused in one plain line before anything is written.

The faults come from the fixture plugin `tests/faultplugin/attnbench_fault` (method `fault_method`, its
`fault` param picks the misbehaviour, per sequence length), so runs that need it go through the CLI in
subprocesses with `tests/faultplugin` on PYTHONPATH; this process's registry stays plugin-free.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnbench import results
from attnbench.cli import app
from attnbench.presets import PresetError, apply_override
from attnbench.registry import SUITES
from attnbench.runner import classify
from attnbench.spec import Status

ROOT = Path(__file__).resolve().parent.parent
FAULT_DIR = ROOT / "tests" / "faultplugin"
cli = CliRunner()


def tiny(*seq_lens: int, methods: str = "fault_method") -> list[str]:
    """A latency run of `methods`' reference backend at tiny shapes, one case per sequence length."""
    lens = f"[{','.join(map(str, seq_lens))}]"
    return ["--preset", "smoke", "--suites", "latency", "--methods", methods, "--backends", "reference",
            "--set", f"shapes.seq_lens={lens}", "--set", f"suite.latency.seq_lens={lens}", "--set", "shapes.heads=2",
            "--set", "shapes.head_dim=8", "--set", "timing.max_reps=2", "--set", "timing.min_time_s=0",
            "--no-report", "--threads", "1"]


def faults(**by_len: str) -> list[str]:
    spec = ",".join(f"{n.lstrip('n')}:{f}" for n, f in by_len.items())
    return ["--param", f'fault_method.fault="{spec}"']


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(FAULT_DIR), out.get("PYTHONPATH", "")) if p)
    out["ATTNBENCH_FAULT_PIDFILE"] = str(tmp_path / "calls.txt")
    return {**out, **extra}


def attnbench(tmp_path: Path, *args: str, timeout: float = 180, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "attnbench", "run", *args], cwd=ROOT, env=env(tmp_path, **extra),
                          capture_output=True, text=True, timeout=timeout)


def by_len(out: Path) -> dict[int, tuple[str, str]]:
    df = results.load([out])
    return {int(n): (g["status"].iloc[0], g["error"].iloc[0]) for n, g in df.groupby("seq_len")}


def calls(tmp_path: Path) -> list[tuple[int, str]]:
    path = tmp_path / "calls.txt"
    lines = path.read_text().split("\n") if path.exists() else []
    return [(int(pid), fault) for pid, fault in (line.split() for line in lines if line.count(" ") == 1)]


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


# -- isolation ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_isolated_faults_each_become_a_row_and_the_run_goes_on(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = attnbench(tmp_path, *tiny(32, 40, 48, 56, 64, 72, 80), "--isolate", "--timeout", "3", "-o", str(out),
                     *faults(n32="print_no_newline", n40="exit0", n48="os_exit", n56="segfault", n64="hang",
                             n72="sigkill"))
    assert proc.returncode == 3, proc.stderr[-3000:]
    got = by_len(out)
    assert got[32] == ("ok", ""), "stdout noise without a newline must not corrupt the result"
    assert got[40][0] == "error" and "SystemExit: 0" in got[40][1]
    assert got[48] == ("error", "worker exited 0 without a result: no output")
    assert got[56][0] == "error" and "SIGSEGV" in got[56][1] and "Segmentation fault" in got[56][1]
    assert got[64] == ("timeout", "exceeded 3 s (process killed)")
    assert got[72][0] == "oom" and "SIGKILL" in got[72][1]
    assert got[80] == ("ok", ""), "a healthy case after the faults still runs"
    assert "5 cases failed (error 3, oom 1, timeout 1)" in proc.stderr


@pytest.mark.slow
def test_isolated_timeout_does_not_count_worker_start_up(tmp_path: Path) -> None:
    """The worker takes 3 s to import here; the case itself takes milliseconds: --timeout 2 is enough."""
    out = tmp_path / "out"
    proc = attnbench(tmp_path, *tiny(32), "--isolate", "--timeout", "2", "-o", str(out),
                     ATTNBENCH_FAULT_WORKER_DELAY="3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert by_len(out) == {32: ("ok", "")}


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_stopping_the_parent_leaves_no_worker_and_keeps_parts(tmp_path: Path, sig: signal.Signals) -> None:
    out = tmp_path / "out"
    args = [sys.executable, "-m", "attnbench", "run", *tiny(32, 40), "--isolate", "-o", str(out),
            *faults(n40="hang")]
    with open(tmp_path / "stderr.txt", "w+") as log:
        proc = subprocess.Popen(args, cwd=ROOT, env=env(tmp_path), stdout=subprocess.DEVNULL, stderr=log,
                                start_new_session=True)
        worker = 0
        try:
            deadline = time.monotonic() + 120
            while not worker and time.monotonic() < deadline and proc.poll() is None:
                worker = next((pid for pid, fault in calls(tmp_path) if fault == "hang"), 0)
                time.sleep(0.05)
            assert worker, "the hanging case never started"
            os.kill(proc.pid, sig)
            rc = proc.wait(60)
            deadline = time.monotonic() + 10
            while alive(worker) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not alive(worker), f"worker {worker} outlived its parent"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if worker and alive(worker):
                os.kill(worker, signal.SIGKILL)
        log.seek(0)
        stderr = log.read()
    assert rc == (143 if sig == signal.SIGTERM else -signal.SIGKILL), stderr[-3000:]
    assert by_len(out) == {32: ("ok", "")}, "the finished case's part is kept"
    if sig == signal.SIGTERM:
        assert "interrupted" in stderr and "--resume" in stderr


# -- in-process crashes ---------------------------------------------------------------------------
@pytest.mark.slow
def test_in_process_segfault_is_recorded_on_resume_not_rerun(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [*tiny(32, 40, 48), "-o", str(out), *faults(n40="segfault")]
    first = attnbench(tmp_path, *args)
    assert first.returncode == -signal.SIGSEGV, first.stderr[-3000:]
    assert "Fatal Python error: Segmentation fault" in first.stderr and "N40" in first.stderr
    assert by_len(out) == {32: ("ok", "")}
    resumed = attnbench(tmp_path, *args, "--resume")
    assert resumed.returncode == 3, resumed.stderr[-3000:]
    got = by_len(out)
    assert got[40][0] == "error" and "crashed the process" in got[40][1] and "--retry-crashed" in got[40][1]
    assert got[48] == ("ok", "")
    assert [f for _, f in calls(tmp_path)].count("segfault") == 1, "the crashing case was run again"


# -- exit codes -----------------------------------------------------------------------------------
FAST = ["--set", "shapes.seq_lens=[32]", "--set", "shapes.heads=2", "--set", "shapes.head_dim=8",
        "--set", "timing.max_reps=2", "--no-report"]


def test_failed_cases_fail_the_run_unless_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    suite = SUITES.get("flops")
    real = suite.run
    monkeypatch.setattr(suite, "run", lambda rc: real(rc) if rc.backend == "reference" else 1 / 0)
    args = ["run", "--preset", "smoke", "--suites", "flops,correctness", "--methods", "mha", "--backends",
            "reference,sdpa", *FAST]
    res = cli.invoke(app, [*args, "-o", str(tmp_path / "a")])
    assert res.exit_code == 3, res.output
    assert "1 case failed (error 1): flops:mha/sdpa" in res.stderr and "--allow-failures" in res.stderr
    res = cli.invoke(app, [*args, "-o", str(tmp_path / "b"), "--allow-failures"])
    assert res.exit_code == 0, res.output
    # skipped (the correctness reference, by design) and unsupported are not failures
    res = cli.invoke(app, ["run", "--preset", "smoke", "--suites", "flops,correctness", "--methods", "mha",
                           "--backends", "reference", *FAST, "-o", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert set(results.load([tmp_path / "c"])["status"]) == {"ok", "skipped"}


def test_allocator_messages_are_oom() -> None:
    for msg in ("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried "
                "to allocate 1099511627776 bytes.", "can't allocate memory: you tried to allocate 8 GiB"):
        assert classify(RuntimeError(msg))[0] == Status.OOM
    assert classify(RuntimeError("shape mismatch"))[0] == Status.ERROR


def test_temp_parts_of_a_killed_run_are_cleaned(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    stale, fresh = out / ".part-old-1.parquet.tmp", out / ".part-new-2.parquet.tmp"
    stale.write_bytes(b"PAR1 truncated")
    fresh.write_bytes(b"PAR1 being renamed")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    res = cli.invoke(app, ["run", "--preset", "smoke", "--suites", "flops", "--methods", "mha", "--backends",
                           "reference", *FAST, "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert not stale.exists() and fresh.exists(), "a stale temp part is removed, a fresh one may be in flight"


# -- bad input ------------------------------------------------------------------------------------
def test_set_values_must_be_toml_or_one_word() -> None:
    data: dict = {}
    for item, want in (("a.b=[1, 2]", [1, 2]), ("a.s=digits", "digits"), ("a.p=x/y-z.w", "x/y-z.w"),
                       ("a.m=/abs/model-1", "/abs/model-1"), ('a.q="two words"', "two words")):
        apply_override(data, item)
        key = item.split("=")[0].split(".")[1]
        assert data["a"][key] == want
    for item in ("shapes.heads=[2", "timing.max_reps=1.2.3", "shapes.dtype=two words"):
        with pytest.raises(PresetError, match=item.split("=")[0]):
            apply_override(data, item)


@pytest.mark.parametrize(("extra", "message"), [
    (["--set", "shapes.seq_lens=[32"], "override shapes.seq_lens: '[32' is not a TOML value"),
    (["--timeout", "0"], "--timeout must be a positive number"),
    (["--timeout", "nan"], "--timeout must be a positive number"),
    (["--timeout", "inf"], "--timeout must be a positive number"),
    (["--budget", "-1"], "--budget must be a positive number"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--preset", "[/x]"], "unknown preset '[/x]'"),
    (["-o", "FILE"], "is a file, not a folder"),
    (["-o", "/proc/attnbench-test/r"], "is not a writable folder"),
    (["-o", "READONLY"], "is not a writable folder"),
    (["--report", "--site", "FILE"], "--site"),
])
def test_bad_input_is_one_plain_line_exit_2_and_nothing_written(tmp_path: Path, extra: list[str],
                                                                message: str) -> None:
    if "READONLY" in extra:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders (the /proc case covers an unwritable -o as root)")
        (tmp_path / "ro").mkdir(mode=0o555)
    (tmp_path / "file").write_text("not a folder")
    swap = {"FILE": str(tmp_path / "file"), "READONLY": str(tmp_path / "ro" / "r")}
    extra = [swap.get(a, a) for a in extra]
    args = ["run", "--preset", "smoke", "--suites", "flops", "--methods", "mha", "--no-report",
            "-o", str(tmp_path / "r"), *extra]
    before = sorted(tmp_path.rglob("*"))
    res = cli.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: ") and message in res.stderr, res.stderr
    assert sorted(tmp_path.rglob("*")) == before, "nothing may be written for bad input"


@pytest.mark.slow
def test_errors_are_plain_unwrapped_lines_in_a_real_process(tmp_path: Path) -> None:
    long_name = "[/x]" + "-very-long-preset-name" * 6
    proc = attnbench(tmp_path, "--preset", long_name, "-o", str(tmp_path / "r"), timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and f"unknown preset {long_name!r}" in proc.stderr, proc.stderr
    assert not (tmp_path / "r").exists()


def test_a_raising_method_is_an_error_row_in_the_flops_suite_too(tmp_path: Path) -> None:
    """The FLOP counter's fallback (None where it cannot trace) must not swallow the method's own fault."""
    out = tmp_path / "out"
    args = [a if a != "latency" else "flops" for a in tiny(32)]
    proc = attnbench(tmp_path, *args, "-o", str(out), *faults(n32="raise"))
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert by_len(out)[32][0] == "error"


def test_rows_that_do_not_fit_the_schema_become_an_error_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from attnbench.suite import Row

    suite = SUITES.get("flops")
    real = suite.run
    monkeypatch.setattr(suite, "run", lambda rc: [Row("flops_useful", 1.0, n=2**70)] if rc.backend == "sdpa"
                        else real(rc))
    args = ["run", "--preset", "smoke", "--suites", "flops", "--methods", "mha", "--backends", "reference,sdpa",
            *FAST, "-o", str(tmp_path / "r"), "--no-report"]
    res = cli.invoke(app, args)
    assert res.exit_code == 3, res.output
    df = results.load([tmp_path / "r"])
    bad = df[df["backend"] == "sdpa"]
    assert list(bad["status"]) == ["error"] and "do not fit the results schema" in bad["error"].iloc[0]
    assert set(df.loc[df["backend"] == "reference", "status"]) == {"ok"}


def test_a_folder_that_stops_taking_files_stops_the_run_and_keeps_parts(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    real = results.write_part
    written: list[int] = []

    def full_after_one(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        if written:
            raise results.OutputError("cannot write a part: the disk is full")
        written.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(results, "write_part", full_after_one)
    out = tmp_path / "r"
    res = cli.invoke(app, ["run", "--preset", "smoke", "--suites", "flops", "--methods", "mha", "--backends",
                           "reference,sdpa", *FAST, "-o", str(out), "--no-report"])
    assert res.exit_code == 2, res.output
    assert "disk is full" in res.stderr and "--resume" in res.stderr and len(res.stderr.strip().splitlines()) >= 1
    assert len(results.load([out])["case_id"].unique()) == 1


def test_unknown_backend_is_named_before_any_suite_plans(tmp_path: Path) -> None:
    res = cli.invoke(app, ["run", "--preset", "smoke", "--suites", "mqar,latency", "--backends", "sdpaa",
                           "-o", str(tmp_path / "r"), "--no-report"])
    assert res.exit_code == 2 and "unknown backend 'sdpaa'; valid:" in res.stderr, res.output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("item", "message"), [
    ("suite.latency.seqlens=[32]", "unknown key(s) 'seqlens'"),
    ("suite.mqar.stepz=3", "unknown key(s) 'stepz'"),
    ("suite.nosuch.x=1", "unknown suite 'nosuch'"),
])
def test_sections_of_suites_not_run_are_validated_too(tmp_path: Path, item: str, message: str) -> None:
    res = cli.invoke(app, ["run", "--preset", "smoke", "--suites", "flops", "--methods", "mha", "--set", item,
                           "-o", str(tmp_path / "r"), "--no-report"])
    assert res.exit_code == 2 and message in res.stderr, res.output
    assert not (tmp_path / "r").exists()
