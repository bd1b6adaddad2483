"""The runner: plans cases from a preset, runs each one safely, writes one part file per case.

It owns device selection, seeding, progress, per-case isolation and time limits, OOM/error
capture (a status row, then on to the next case), resume and sharding. Suites only measure.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from attnbench import device as devmod
from attnbench import results
from attnbench.presets import Preset
from attnbench.registry import METHODS, SUITES, UnknownNameError, load_plugins
from attnbench.spec import Backend, Status, Workload
from attnbench.suite import Case, ResolvedCase, Row, status_row

# Warnings a benchmark triggers on purpose (eager flex is a measured backend, not a mistake).
_EXPECTED_WARNINGS = (".*flex_attention called without torch.compile.*", ".*return_lse is deprecated.*")


class PlanError(ValueError):
    """The requested run is impossible as asked (reported before anything runs)."""


@dataclass
class RunSummary:
    run_id: str
    out_dir: Path
    planned: int
    skipped_done: int
    statuses: Counter[str] = field(default_factory=Counter)
    interrupted: bool = False
    seconds: float = 0.0


@dataclass
class Runner:
    """Run `preset` into `out_dir`. `explicit_params` are user-given params that must be valid."""

    preset: Preset
    out_dir: Path
    resume: bool = False
    shard: tuple[int, int] = (1, 1)
    isolate: bool = False
    timeout_s: float | None = None
    threads: int | None = None
    budget_s: float | None = None
    explicit_params: frozenset[str] = frozenset()
    console: Console = field(default_factory=lambda: Console(stderr=True))
    run_id: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y%m%dT%H%M%S-")
                        + uuid.uuid4().hex[:6])

    def __post_init__(self) -> None:
        load_plugins()
        self.device = devmod.resolve(self.preset.device)
        self.preset = self.preset.with_device(self.device)
        if self.threads:
            torch.set_num_threads(self.threads)
        self.info = devmod.capture(self.device)

    # -- planning -------------------------------------------------------------------------
    def plan(self) -> list[Case]:
        """Every case of the preset's suites (this shard), validated before anything runs."""
        if not self.preset.suites:
            raise PlanError(f"preset {self.preset.name!r} names no suites")
        cases: list[Case] = []
        for name in self.preset.suites:
            try:
                suite = SUITES.get(name)
            except UnknownNameError as exc:
                raise PlanError(str(exc)) from None
            try:
                cases.extend(suite.cases(self.preset, METHODS))
            except (ValueError, KeyError) as exc:
                raise PlanError(f"suite {name}: {exc}") from None
        self._check_selection(cases)
        for case in cases:
            self._check_explicit(case)
        i, n = self.shard
        return [c for k, c in enumerate(sorted(cases, key=lambda c: c.case_id)) if k % n == i - 1] \
            if n > 1 else cases

    def _check_selection(self, cases: list[Case]) -> None:
        for key in ("methods", "backends"):
            for pattern in self.preset.data.get(key, ["*"]):
                if any(ch in pattern for ch in "*?["):
                    continue
                known = METHODS.names() if key == "methods" else [b.value for b in Backend]
                if pattern not in known:
                    what = "method" if key == "methods" else "backend"
                    if what == "method":
                        METHODS.get(pattern)  # raises with close matches
                    raise PlanError(f"unknown backend {pattern!r}; valid: {', '.join(known)}")
        if not cases:
            raise PlanError("the selection matches no case (check --methods/--backends/--suites)")

    def _check_explicit(self, case: Case) -> None:
        if case.method not in self.explicit_params:
            return
        entry = METHODS.get(case.method)
        defaults = entry.spec.params({})
        if entry.spec.why_not(entry.spec.shape(case.workload, defaults), defaults):
            return  # impossible whatever the params (e.g. no causal form): its row records why
        try:
            rc = ResolvedCase.resolve(case, METHODS)
            why = rc.spec.why_not(rc.workload, rc.params)
        except ValueError as exc:
            why = str(exc)
        if why:
            raise PlanError(f"{case.method} with {case.params} at {case.workload.id}: {why}")

    # -- running --------------------------------------------------------------------------
    def run(self) -> RunSummary:
        cases = self.plan()
        done = results.done_case_ids(self.out_dir) if self.resume else set()
        todo = [c for c in cases if c.case_id not in done]
        summary = RunSummary(self.run_id, self.out_dir, len(cases), len(cases) - len(todo))
        start = time.perf_counter()
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("{task.fields[case]}")]
        with Progress(*columns, console=self.console, transient=False) as progress:
            task = progress.add_task(f"run {self.run_id}", total=len(todo), case="")
            try:
                for case in todo:
                    progress.update(task, case=case.label)
                    if self.budget_s and time.perf_counter() - start > self.budget_s:
                        reason = f"run budget of {self.budget_s:g} s exhausted before this case"
                        rows = self.rows(case, case.workload, [status_row(Status.SKIPPED, reason)])
                    else:
                        rows = self.run_case(case)
                    for r in rows:
                        summary.statuses[r["status"]] += 1
                    results.write_part(self.out_dir, rows, run_id=self.run_id)
                    progress.advance(task)
            except KeyboardInterrupt:
                summary.interrupted = True
        summary.seconds = time.perf_counter() - start
        return summary

    def run_case(self, case: Case) -> list[dict[str, Any]]:
        """Measure one case and return full result rows; never raises for the case's own faults.

        The case is resolved once here (method entry, backend, validated params, shaped workload);
        the suite gets the ResolvedCase and looks nothing up again."""
        suite = SUITES.get(case.suite)
        w = case.workload
        try:
            rc = ResolvedCase.resolve(case, METHODS)
            w = rc.workload
            why = suite.applies_to(rc.entry, rc.backend)
            if why:
                return self.rows(case, w, [status_row(Status.SKIPPED, why)])
            why = rc.why_not()
            if why:
                return self.rows(case, w, [status_row(Status.UNSUPPORTED, why)])
        except ValueError as exc:
            return self.rows(case, w, [status_row(Status.UNSUPPORTED, str(exc))])
        torch.manual_seed(case.seed)
        if self.isolate:
            return self.rows(case, w, self._run_isolated(case))
        return self.rows(case, w, self._run_in_process(suite, rc))

    def _run_in_process(self, suite: Any, rc: ResolvedCase) -> list[Row]:
        try:
            with _time_limit(self.timeout_s), warnings.catch_warnings():
                for message in _EXPECTED_WARNINGS:
                    warnings.filterwarnings("ignore", message=message)
                return suite.run(rc)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 — every fault becomes a status row
            return [status_row(*classify(exc))]

    def _run_isolated(self, case: Case) -> list[Row]:
        cmd = [sys.executable, "-m", "attnbench.worker"]
        env = {**os.environ, "ATTNBENCH_THREADS": str(torch.get_num_threads())}
        try:
            proc = subprocess.run(cmd, input=case.to_json(), capture_output=True, text=True,
                                  timeout=self.timeout_s, env=env)
        except subprocess.TimeoutExpired:
            return [status_row(Status.TIMEOUT, f"exceeded {self.timeout_s:g} s (process killed)")]
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            status = Status.OOM if proc.returncode in (-9, 137) else Status.ERROR
            return [status_row(status, f"worker exited {proc.returncode}: {tail}")]
        return [row_from_json(d) for d in json.loads(proc.stdout.strip().splitlines()[-1])]

    def rows(self, case: Case, w: Workload, measured: list[Row]) -> list[dict[str, Any]]:
        """Full schema rows: case and device columns plus each measurement."""
        entry = METHODS.get(case.method)
        base = {
            "run_id": self.run_id, "created_at": datetime.now(UTC), "suite": case.suite,
            "suite_version": case.suite_version, "case_id": case.case_id, "method": case.method,
            "family": entry.spec.family, "backend": str(case.backend), "params": case.params,
            "workload_id": w.id, "batch": w.batch, "heads": w.heads_q, "kv_heads": w.heads_kv,
            "seq_len": w.seq_q, "seq_kv": w.seq_kv, "head_dim": w.head_dim, "dtype": w.dtype,
            "causal": w.causal, "mode": w.mode, "seed": case.seed, "preset": case.preset,
            "options": case.options, **self.info.as_dict(),
        }
        out = []
        for r in measured:
            row = {**base, "metric": r.metric, "value": _num(r.value), "unit": r.unit, "stat": r.stat,
                   "n": r.n, "p20": _num(r.p20), "p80": _num(r.p80),
                   "samples": [float(s) for s in r.samples] if r.samples is not None else None,
                   "status": str(r.status), "error": r.error[:2000]}
            row.update(r.extra)
            out.append(row)
        return out


def _num(x: Any) -> float | None:
    return None if x is None else float(x)


def classify(exc: BaseException) -> tuple[Status, str]:
    """Status and one-line reason for an exception raised by a case."""
    msg = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    if isinstance(exc, TimeoutError):
        return Status.TIMEOUT, msg
    if isinstance(exc, torch.OutOfMemoryError | MemoryError) or "out of memory" in str(exc).lower():
        return Status.OOM, msg
    if isinstance(exc, NotImplementedError):
        return Status.UNSUPPORTED, msg
    return Status.ERROR, msg + " @ " + _where(exc)


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"


@contextlib.contextmanager
def _time_limit(seconds: float | None) -> Iterator[None]:
    """Raise TimeoutError in the main thread after `seconds` (checked between Python bytecodes)."""
    if not seconds or not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeoutError(f"exceeded {seconds:g} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def row_to_json(r: Row) -> dict[str, Any]:
    return {"metric": r.metric, "value": r.value, "unit": r.unit, "stat": r.stat, "n": r.n, "p20": r.p20,
            "p80": r.p80, "samples": list(r.samples) if r.samples is not None else None,
            "status": str(r.status), "error": r.error, "extra": r.extra}


def row_from_json(d: dict[str, Any]) -> Row:
    return Row(**{**d, "status": Status(d["status"])})
