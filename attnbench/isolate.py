"""Process safety for the runner: isolated workers (parent side) and in-process crash markers.

Isolated cases (`--isolate`) run in `python -m attnbench.worker`, in a process group of their own (on
CPU forked by the run's warm zygote, `attnbench.zygote`, so torch is imported once per run, not per case).
The worker reports on a dedicated pipe (fd `ATTNBENCH_RESULT_FD`), never on stdout, one line per
message: `ready` once its imports are done (the case's time limit starts then), then `rows <json>`.
Its stdout and stderr go to a log whose last lines explain an exit without a result. The group is
killed when the case ends, times out or the parent is interrupted; on Linux the worker also asks
the kernel for SIGKILL when its parent dies (`PR_SET_PDEATHSIG`).

In-process cases cannot be protected that way: before each one the runner writes a marker
(`.inflight-<run_id>.json`) in the results folder and removes it once the case's part is written. A
marker whose process is gone means that case took the process down (segfault, abort, OOM kill,
`os._exit`, or a `kill -9` of the run: the marker cannot tell): the next run turns it into a
`.crashed-<case_id>.json` record, and `--resume` records such a case as an `error` row instead of
running it again, unless `--retry-crashed` or `--isolate` (where a crash is just that case's row).
The record goes once the case completes.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from attnbench.spec import Status
from attnbench.suite import Case, Row, status_row

RESULT_FD_ENV = "ATTNBENCH_RESULT_FD"
PARENT_ENV = "ATTNBENCH_PARENT_PID"
STARTUP_LIMIT_S = 300.0  # a worker that is not ready by then is stuck in its imports
EXIT_GRACE_S = 10.0  # after its result, how long a worker may take to exit before its group is killed
CRASH_REASON = "crashed the process (segfault?) in a previous run; --retry-crashed to run it again"


# -- isolated worker, parent side ---------------------------------------------------------------
def run_isolated(case: Case, timeout_s: float | None, threads: int, zygote: Any = None) -> list[Row]:
    """Run `case` in a fresh worker process (forked by `zygote`, an `attnbench.zygote.Zygote`, when given
    and alive); every way the worker can end gives rows."""
    read_fd, write_fd = os.pipe()
    env = {**os.environ, "ATTNBENCH_THREADS": str(threads), RESULT_FD_ENV: str(write_fd),
           PARENT_ENV: str(os.getpid())}
    with tempfile.TemporaryFile() as log:
        try:
            proc = zygote.spawn(case.to_json(), write_fd, log) if zygote is not None and zygote.alive else None
            if proc is None:
                proc = subprocess.Popen([sys.executable, "-m", "attnbench.worker"], stdin=subprocess.PIPE,
                                        stdout=log, stderr=log, env=env, pass_fds=(write_fd,), start_new_session=True)
        finally:
            os.close(write_fd)
        try:
            with contextlib.suppress(BrokenPipeError):  # a worker that died at once: its exit says why
                if proc.stdin is not None:
                    proc.stdin.write(case.to_json().encode())
                    proc.stdin.close()
            chan = _Channel(read_fd, proc)
            if chan.wait_for("ready", STARTUP_LIMIT_S) is None and not chan.closed:
                return [status_row(Status.TIMEOUT, f"worker not ready within {STARTUP_LIMIT_S:g} s (killed)")]
            if not chan.closed:
                message = chan.wait_for("rows", timeout_s)
                if message is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(EXIT_GRACE_S)
                    try:
                        return [row_from_json(d) for d in json.loads(message)]
                    except (ValueError, TypeError, KeyError) as exc:
                        return [status_row(Status.ERROR, f"worker sent an unreadable result: {exc}")]
                if not chan.closed:
                    return [status_row(Status.TIMEOUT, f"exceeded {timeout_s:g} s (process killed)")]
            with contextlib.suppress(subprocess.TimeoutExpired):  # the pipe closed: the worker is exiting
                proc.wait(EXIT_GRACE_S)
            _kill_group(proc)
            return [_exit_row(proc.wait(), _tail(log))]
        finally:
            _kill_group(proc)
            proc.wait()
            os.close(read_fd)


class _Channel:
    """Line messages `<kind> <payload>` from a worker's result pipe."""

    def __init__(self, fd: int, proc: subprocess.Popen[bytes]) -> None:
        self.fd, self.proc, self.buf, self.closed = fd, proc, b"", False

    def wait_for(self, kind: str, limit_s: float | None) -> str | None:
        """Payload of the next `kind` message; None at end of channel (worker gone) or after `limit_s`."""
        deadline = None if limit_s is None else time.monotonic() + limit_s
        while True:
            line, sep, rest = self.buf.partition(b"\n")
            if sep:
                self.buf = rest
                got, _, payload = line.decode().partition(" ")
                if got == kind:
                    return payload
                continue
            if self.closed:
                return None
            wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if wait <= 0:
                return None
            if select.select([self.fd], [], [], wait)[0]:
                data = os.read(self.fd, 1 << 16)
                self.buf += data
                self.closed = not data
            elif self.proc.poll() is not None:  # exited while a grandchild still holds the pipe open
                self.closed = True


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _exit_row(code: int, tail: str) -> Row:
    """The status row of a worker that ended without a result."""
    if code in (-signal.SIGKILL, 137):
        how, status = "was killed (SIGKILL: out of memory?)", Status.OOM
    elif code < 0:
        how, status = f"died of signal {signal.Signals(-code).name}", Status.ERROR
    else:
        how, status = f"exited {code} without a result", Status.ERROR
    return status_row(status, f"worker {how}: {tail or 'no output'}")


def _tail(log: Any, lines: int = 3) -> str:
    """What the worker last wrote (stdout and stderr) on one line: a fatal error and its innermost
    frame (faulthandler), else the last lines."""
    log.seek(0, os.SEEK_END)
    log.seek(max(0, log.tell() - 16384))
    text = [s.strip() for s in log.read().decode(errors="replace").splitlines() if s.strip()]
    fatal = [k for k, s in enumerate(text) if s.startswith("Fatal Python error")]
    if fatal:
        frames = [s for s in text[fatal[-1]:] if s.startswith("File ")]
        return " | ".join([text[fatal[-1]], *frames[:1]])[-1000:]
    return " | ".join(text[-lines:])[-1000:]


# -- isolated worker, child side ------------------------------------------------------------------
def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    parent = os.environ.get(PARENT_ENV)
    if parent and os.getppid() != int(parent):  # the parent died before prctl took effect
        os._exit(1)


def send(kind: str, payload: str = "") -> None:
    """Write one message to the parent's result pipe (stdout when run by hand)."""
    data = f"{kind} {payload}\n".encode()
    fd = int(os.environ[RESULT_FD_ENV]) if os.environ.get(RESULT_FD_ENV) else None
    if fd is None:
        sys.stdout.write(data.decode())
        sys.stdout.flush()
        return
    while data:
        data = data[os.write(fd, data):]


def row_to_json(r: Row) -> dict[str, Any]:
    return {"metric": r.metric, "value": r.value, "unit": r.unit, "stat": r.stat, "n": r.n, "p20": r.p20,
            "p80": r.p80, "samples": list(r.samples) if r.samples is not None else None,
            "status": str(r.status), "error": r.error, "extra": r.extra}


def row_from_json(d: dict[str, Any]) -> Row:
    return Row(**{**d, "status": Status(d["status"])})


# -- in-process crash markers ---------------------------------------------------------------------
def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Markers:
    """The in-flight marker of this run and the crash records of earlier ones, in `folder`."""

    def __init__(self, folder: Path, run_id: str) -> None:
        self.folder, self.run_id = folder, run_id
        self.inflight = folder / f".inflight-{run_id}.json"

    def collect_stale(self) -> None:
        """Turn markers of runs whose process is gone into crash records."""
        for marker in self.folder.glob(".inflight-*.json"):
            try:
                data = json.loads(marker.read_text())
            except (OSError, ValueError):
                marker.unlink(missing_ok=True)
                continue
            if data.get("pid") != os.getpid() and pid_alive(int(data.get("pid", 0))):
                continue  # another run into this folder, still going
            record = self.folder / f".crashed-{data['case_id']}.json"
            record.write_text(json.dumps(data))
            marker.unlink(missing_ok=True)

    def crashed(self) -> dict[str, dict[str, Any]]:
        """case_id → record of the cases that took a process down."""
        out = {}
        for record in self.folder.glob(".crashed-*.json"):
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(record.read_text())
                out[data["case_id"]] = data
        return out

    def enter(self, case: Case) -> None:
        data = {"case_id": case.case_id, "label": case.label, "pid": os.getpid(), "run_id": self.run_id,
                "started": time.time(), "case": json.loads(case.to_json())}
        self.inflight.write_text(json.dumps(data))  # a torn marker (killed mid-write) is dropped as unreadable

    def leave(self, case: Case | None = None) -> None:
        """The case in flight ended (its part is written, or it was interrupted)."""
        self.inflight.unlink(missing_ok=True)
        if case is not None:
            (self.folder / f".crashed-{case.case_id}.json").unlink(missing_ok=True)


def clean_temp_parts(folder: Path, older_than_s: float = 60.0) -> int:
    """Remove part temp files a killed run left (not ones a concurrent run may still be renaming)."""
    n = 0
    for tmp in folder.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            if time.time() - tmp.stat().st_mtime > older_than_s:
                tmp.unlink()
                n += 1
    return n
