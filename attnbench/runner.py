"""The runner: plans cases from a preset, runs each one safely, writes one part file per case.

It owns device selection, seeding, progress, per-case isolation and time limits, OOM/error
capture (a status row, then on to the next case), resume and sharding. Suites only measure.

Nothing lost, nothing falsely green: every case ends as rows (a status row when it failed); SIGTERM
stops a run like Ctrl-C (finished parts kept, the running worker killed); a case that takes the
process down in process is named by its marker and recorded, not rerun, by the next `--resume`
(`attnbench.isolate`). An `os._exit()` inside an in-process case cannot be caught: its marker
records it on resume; `--isolate` turns it into an `error` row at once.
"""

from __future__ import annotations

import contextlib
import faulthandler
import signal
import threading
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
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from attnbench import device as devmod
from attnbench import results
from attnbench.isolate import CRASH_REASON, Markers, clean_temp_parts, row_from_json, row_to_json, run_isolated
from attnbench.presets import Preset
from attnbench.registry import METHODS, SUITES, UnknownNameError, load_plugins
from attnbench.spec import Backend, Status, Workload
from attnbench.suite import Case, ResolvedCase, Row, status_row
from attnbench.zygote import Zygote
from attnbench.zygote import start as start_zygote

__all__ = ["FAILED", "Interrupted", "PlanError", "RunSummary", "Runner", "classify", "row_from_json",
           "row_to_json"]

# Statuses that fail a run (exit non-zero); unsupported and skipped are by design.
FAILED = (Status.ERROR, Status.WRONG, Status.TIMEOUT, Status.OOM)
# Messages of allocation failures that are not typed as OutOfMemoryError (CPU allocator, malloc).
_OOM_MESSAGES = ("out of memory", "not enough memory", "can't allocate memory", "cannot allocate memory",
                 "defaultcpuallocator")

# Warnings a benchmark triggers on purpose (eager flex is a measured backend, not a mistake).
_EXPECTED_WARNINGS = (".*flex_attention called without torch.compile.*", ".*return_lse is deprecated.*")


class PlanError(ValueError):
    """The requested run is impossible as asked (reported before anything runs)."""


class Interrupted(KeyboardInterrupt):
    """A stop signal other than SIGINT (SIGTERM), handled like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class RunSummary:
    run_id: str
    out_dir: Path
    planned: int
    skipped_done: int
    statuses: Counter[str] = field(default_factory=Counter)
    interrupted: bool = False
    signum: int = 0  # the signal that interrupted the run (SIGINT or SIGTERM)
    seconds: float = 0.0
    failures: Counter[str] = field(default_factory=Counter)  # failed cases per status (FAILED)
    failed_cases: list[str] = field(default_factory=list)  # their labels

    def failure_text(self, show: int = 3) -> str:
        """`2 cases failed (error 1, timeout 1): label, label`, or "" when none did."""
        if not self.failed_cases:
            return ""
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.failures.items()))
        more = f" and {len(self.failed_cases) - show} more" if len(self.failed_cases) > show else ""
        n = len(self.failed_cases)
        return f"{n} case{'s' * (n != 1)} failed ({counts}): {'; '.join(self.failed_cases[:show])}{more}"


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
    retry_crashed: bool = False
    explicit_params: frozenset[str] = frozenset()
    console: Console = field(default_factory=lambda: Console(stderr=True))
    run_id: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y%m%dT%H%M%S-")
                        + uuid.uuid4().hex[:6])
    zygote: Any = field(default=False, init=False, repr=False)  # warm worker parent (None: start when needed)

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
        self._check_names()
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
        self._check_other_sections()
        if not cases:
            raise PlanError("the selection matches no case (check --methods/--backends/--suites)")
        for case in cases:
            self._check_explicit(case)
        i, n = self.shard
        return [c for k, c in enumerate(sorted(cases, key=lambda c: c.case_id)) if k % n == i - 1] \
            if n > 1 else cases

    def _check_other_sections(self) -> None:
        """`[suite.<name>]` sections of suites this run does not select are validated too: a typo is
        refused rather than silently ignored."""
        for name in self.preset.data.get("suite", {}):
            if name in self.preset.suites:
                continue
            try:
                settings = getattr(SUITES.get(name), "settings", None)
                if settings is not None:
                    settings(self.preset)
            except UnknownNameError as exc:
                raise PlanError(f"[suite.{name}]: {exc}") from None
            except ValueError as exc:
                raise PlanError(f"suite {name}: {exc}") from None

    def _check_names(self) -> None:
        """Explicit (wildcard-free) method and backend names must exist, before any suite plans."""
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
    def run(self, cases: list[Case] | None = None, executor: Any = None) -> RunSummary:
        """Run `cases` (default: `plan()`), one part file per case; never raises for a case's own faults.
        `executor` (e.g. `attnbench.executors.RayExecutor`) runs them elsewhere: `executor.run(self, cases)`."""
        cases = self.plan() if cases is None else cases
        if executor is not None:
            return executor.run(self, cases)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        clean_temp_parts(self.out_dir)
        markers = Markers(self.out_dir, self.run_id)
        markers.collect_stale()
        done = results.done_case_ids(self.out_dir) if self.resume else set()
        # Cases that took a process down are not run again in process (isolated, a crash is just a row).
        crashed = markers.crashed() if self.resume and not (self.retry_crashed or self.isolate) else {}
        todo = [c for c in cases if c.case_id not in done]
        summary = RunSummary(self.run_id, self.out_dir, len(cases), len(cases) - len(todo))
        start, self.zygote = time.perf_counter(), None  # a zygote lives as long as `run` (not for Ray tasks)
        with _stop_signals(), _fault_handler(), self.progress() as progress:
            task = progress.add_task(f"run {self.run_id}", total=len(todo), case="")
            try:
                for k, case in enumerate(todo, 1):
                    progress.update(task, case=case.label)
                    progress.refresh()
                    if not self.console.is_terminal:  # a log line per case: a crash or hang names its case
                        self.console.print(f"[{k}/{len(todo)}] {case.label}", markup=False, highlight=False,
                                           soft_wrap=True)
                    if case.case_id in crashed:
                        why = f"{CRASH_REASON} (run {crashed[case.case_id].get('run_id', '?')})"
                        rows = self.rows(case, case.workload, [status_row(Status.ERROR, why)])
                    elif self.budget_s and time.perf_counter() - start > self.budget_s:
                        reason = f"run budget of {self.budget_s:g} s exhausted before this case"
                        rows = self.rows(case, case.workload, [status_row(Status.SKIPPED, reason)])
                    else:
                        if not self.isolate:
                            markers.enter(case)
                        rows = self.run_case(case)
                    rows = self._write(case, rows)
                    _count(summary, case, rows)
                    markers.leave(None if case.case_id in crashed else case)
                    progress.advance(task)
            except KeyboardInterrupt as exc:
                summary.interrupted = True
                summary.signum = getattr(exc, "signum", signal.SIGINT)
            finally:
                markers.leave()  # interrupted (or failed) in Python: not a crash
                self.zygote = self.zygote and self.zygote.close() or False  # the next run starts its own
        summary.seconds = time.perf_counter() - start
        return summary

    def progress(self) -> Progress:
        """The run's progress bar (cases done of those to run, elapsed, ETA), shared by every executor."""
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                   TextColumn("{task.fields[case]}", markup=False)]
        return Progress(*columns, console=self.console, transient=False)

    def _write(self, case: Case, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Write a case's part; rows that do not fit the schema become one `error` row (the run goes on).
        A folder that stops taking files (disk full) raises `results.OutputError`: nothing more can be kept."""
        try:
            results.write_part(self.out_dir, rows, run_id=self.run_id)
            return rows
        except results.SchemaError as exc:
            why = f"rows do not fit the results schema: {exc}"
            rows = self.rows(case, case.workload, [status_row(Status.ERROR, why)])
            results.write_part(self.out_dir, rows, run_id=self.run_id)
            return rows

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
            return self.rows(case, w, run_isolated(case, self.timeout_s, torch.get_num_threads(), self._warm()))
        return self.rows(case, w, self._run_in_process(suite, rc))

    def _warm(self) -> Zygote | None:
        """The run's warm worker parent, started at its first isolated case (`attnbench.zygote.start`)."""
        self.zygote = start_zygote(self.zygote, self.device, torch.get_num_threads())
        return self.zygote or None

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
    if isinstance(exc, torch.OutOfMemoryError | MemoryError) or any(m in str(exc).lower() for m in _OOM_MESSAGES):
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


def _count(summary: RunSummary, case: Case, rows: list[dict[str, Any]]) -> None:
    for r in rows:
        summary.statuses[r["status"]] += 1
    failed = [r["status"] for r in rows if r["status"] in FAILED]
    if failed:
        summary.failures[failed[0]] += 1
        summary.failed_cases.append(f"{case.label} [{failed[0]}]")


@contextlib.contextmanager
def _stop_signals() -> Iterator[None]:
    """SIGTERM raises `Interrupted` (a KeyboardInterrupt) while a run is going, as SIGINT does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def _fault_handler() -> Iterator[None]:
    """Python tracebacks on stderr if an in-process case segfaults or aborts."""
    was = faulthandler.is_enabled()
    with contextlib.suppress(Exception):
        faulthandler.enable(file=2, all_threads=True)
    try:
        yield
    finally:
        if not was:
            faulthandler.disable()
