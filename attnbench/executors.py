"""Executors for `attnbench run`: where planned cases run. `local` is `Runner.run` itself; `ray` fans out.

`RayExecutor` takes the runner's plan (preset, `--shard`, `--resume` filtering as the local run) and starts
one Ray task per case with declared resources (`num_gpus=1` for a CUDA case, else `num_cpus=<threads>`).
Each task builds a `Runner` with the same preset and run_id on its node and calls `Runner.run_case`: the
same resolution, skipped/unsupported rows, suite run and schema rows, with the device columns (hostname
included) captured on the worker. Workers only return rows; the driver writes each finished case's part
file, exactly once, through `Runner._write`. One writer needs no shared filesystem between the nodes and
keeps the atomic temp-file + rename of `results.write_part` (and the disk-full error) in one process.

A worker that dies mid-case (killed, segfault, node lost) gives that case an `error` row, one killed by
Ray's memory monitor an `oom` row; tasks are never retried (a crash is the case's result, not a flake).
A Python exception inside a case is already a status row from `run_case`. Ray is imported lazily.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from attnbench import results
from attnbench.isolate import clean_temp_parts
from attnbench.spec import Status
from attnbench.suite import Case, Row, status_row

if TYPE_CHECKING:
    from attnbench.runner import Runner, RunSummary

EXECUTORS = ("local", "ray")
NEEDS_RAY = "--executor ray needs ray: pip install 'attnbench[ray]'"
WAIT_S = 1.0  # ray.wait slice: stop signals and the run budget are checked between slices


class ExecutorError(ValueError):
    """An executor that cannot be used as asked (reported before anything runs)."""


def check(executor: str, address: str | None = None) -> None:
    """Refuse an unknown executor, `--address` without ray, or ray when it is not installed."""
    if executor not in EXECUTORS:
        raise ExecutorError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    if address and executor != "ray":
        raise ExecutorError("--address is the Ray cluster address: it needs --executor ray")
    if executor == "ray" and importlib.util.find_spec("ray") is None:
        raise ExecutorError(NEEDS_RAY)


def make(executor: str, address: str | None = None) -> RayExecutor | None:
    """The executor object `Runner.run` takes (None: run locally)."""
    check(executor, address)
    return RayExecutor(address=address) if executor == "ray" else None


def run_remote(spec: dict[str, Any], case_json: str) -> list[dict[str, Any]]:
    """The Ray task body: `Runner.run_case` on this node (its device info, hostname included)."""
    from attnbench.runner import Runner

    return Runner(**spec).run_case(Case.from_json(case_json))


@dataclass
class RayExecutor:
    """Run cases as Ray tasks on a cluster (`address`, e.g. "auto") or a local Ray started for the run."""

    address: str | None = None
    num_cpus: int | None = None  # for a local Ray started here (None: every core)

    def run(self, runner: Runner, cases: list[Case]) -> RunSummary:
        """Like `Runner.run`, but every case runs as one Ray task; the driver writes the parts."""
        from attnbench.runner import RunSummary, _stop_signals

        runner.out_dir.mkdir(parents=True, exist_ok=True)
        clean_temp_parts(runner.out_dir)
        done = results.done_case_ids(runner.out_dir) if runner.resume else set()
        todo = [c for c in cases if c.case_id not in done]
        summary = RunSummary(runner.run_id, runner.out_dir, len(cases), len(cases) - len(todo))
        start = time.perf_counter()
        if not todo:
            return summary
        started = self._init()
        try:
            with _stop_signals(), runner.progress() as progress:
                task = progress.add_task(f"run {runner.run_id} on ray", total=len(todo), case="")
                try:
                    self._loop(runner, todo, summary, progress, task, start)
                except KeyboardInterrupt as exc:
                    summary.interrupted = True
                    summary.signum = getattr(exc, "signum", signal.SIGINT)
        finally:
            if started:
                import ray

                ray.shutdown()
        summary.seconds = time.perf_counter() - start
        return summary

    def _init(self) -> bool:
        """Connect to (or start) Ray unless it is up already; True when this call started it."""
        import ray

        if ray.is_initialized():
            return False
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
        if self.address:
            kw["address"] = self.address
        else:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local cluster: no token
            kw["num_cpus"] = self.num_cpus
        if os.environ.get("PYTHONPATH"):  # plugins found through PYTHONPATH here are found by the workers too
            kw["runtime_env"] = {"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}}
        ray.init(**kw)
        return True

    def _loop(self, runner: Runner, todo: list[Case], summary: RunSummary, progress: Any, task: Any,
              start: float) -> None:
        import ray

        from attnbench.runner import _count

        remote = ray.remote(run_remote)
        pending: dict[Any, Case] = {}
        try:
            for case in todo:
                ref = remote.options(**resources(runner, case), max_retries=0, retry_exceptions=False,
                                     name=case.label[:100]).remote(worker_spec(runner, case), case.to_json())
                pending[ref] = case
            k = 0
            while pending:
                if runner.budget_s and time.perf_counter() - start > runner.budget_s:
                    why = f"run budget of {runner.budget_s:g} s exhausted before this case finished"
                    for ref in pending:
                        ray.cancel(ref, force=True)
                    ready = [(ref, _rows(runner, pending[ref], [status_row(Status.SKIPPED, why)])) for ref in pending]
                else:
                    refs, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_S)
                    ready = [(ref, self._rows(runner, pending[ref], ref)) for ref in refs]
                for ref, measured in ready:
                    case = pending.pop(ref)
                    rows = runner._write(case, measured)
                    _count(summary, case, rows)
                    k += 1
                    progress.update(task, case=case.label)
                    progress.advance(task)
                    if not runner.console.is_terminal:
                        runner.console.print(f"[{k}/{len(todo)}] {case.label} {rows[0]['status']} "
                                             f"@ {rows[0]['hostname']}", markup=False, highlight=False,
                                             soft_wrap=True)
        finally:
            for ref in pending:  # interrupted: no case keeps running on the cluster
                ray.cancel(ref, force=True)

    @staticmethod
    def _rows(runner: Runner, case: Case, ref: Any) -> list[dict[str, Any]]:
        """The rows a task returned, or the status row of a task that ended without them."""
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.OutOfMemoryError as exc:
            row = status_row(Status.OOM, f"ray worker killed (out of memory): {_first_line(exc)}")
        except ray.exceptions.TaskCancelledError as exc:
            row = status_row(Status.ERROR, f"ray task cancelled: {_first_line(exc)}")
        except ray.exceptions.RayTaskError as exc:  # the task raised outside run_case (e.g. a plugin missing)
            from attnbench.runner import classify

            cause = getattr(exc, "cause", None)
            row = status_row(*classify(cause)) if isinstance(cause, BaseException) else \
                status_row(Status.ERROR, f"ray task failed: {_first_line(exc)}")
        except ray.exceptions.RayError as exc:  # WorkerCrashedError, NodeDiedError, ObjectLostError, ...
            row = status_row(Status.ERROR, f"ray worker died mid-case ({type(exc).__name__}): {_first_line(exc)}")
        return _rows(runner, case, [row])


def resources(runner: Runner, case: Case) -> dict[str, Any]:
    """What one case's task declares: a whole GPU for a CUDA case, else its CPU threads."""
    if str(case.workload.device).startswith("cuda"):
        return {"num_gpus": 1, "num_cpus": 1}
    return {"num_cpus": runner.threads or 1}


def worker_spec(runner: Runner, case: Case) -> dict[str, Any]:
    """The `Runner` arguments of a case's task: same preset and run_id; Ray shows the task one GPU (cuda)."""
    preset = runner.preset
    if str(case.workload.device).startswith("cuda"):
        preset = preset.with_device("cuda")
    return {"preset": preset, "out_dir": runner.out_dir, "run_id": runner.run_id, "isolate": runner.isolate,
            "timeout_s": runner.timeout_s, "threads": runner.threads or 1,
            "explicit_params": runner.explicit_params}


def _rows(runner: Runner, case: Case, measured: list[Row]) -> list[dict[str, Any]]:
    """Driver-side status rows (device columns of the driver: the worker's are gone with it)."""
    return runner.rows(case, case.workload, measured)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:500]
