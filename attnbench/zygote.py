"""A warm worker parent for `--isolate`: torch and the plugins are imported once per run, not per case.

The runner starts `python -m attnbench.worker --zygote` (its own session, `PR_SET_PDEATHSIG` on the
runner) and talks to it over a SOCK_SEQPACKET socket. Per case the runner sends the case JSON with two
file descriptors (the case's result pipe and its log); the zygote forks a child that puts itself in a
process group of its own (the zygote does too, before it answers, so the runner can always kill the
group), points stdout/stderr at the log, asks for SIGKILL when the zygote dies, and then runs exactly
what a fresh worker runs (`attnbench.worker.run_case_json`: `ready`, then `rows`, on the result pipe).
The zygote answers `pid <n>`, waits for the child, and answers `exit <code>` (negative: a signal).

Everything else (time limit after `ready`, group kill, crash rows) is `attnbench.isolate.run_isolated`'s.
CPU runs only: a process that has touched CUDA must not fork. A zygote that cannot start or dies makes
the runner fall back to a fresh worker per case.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from typing import IO, Any

ZYGOTE_FD_ENV = "ATTNBENCH_ZYGOTE_FD"
# Imported by the zygote before it forks (no threads, no device touched): torch imports them lazily on a
# case's first call (dynamo, sympy, the FLOP counter), which would cost every forked worker ~1 s again.
WARM_MODULES = ("attnbench.runner", "torch._dynamo", "torch.utils.flop_counter", "torch.nn.attention.flex_attention")
ANSWER_LIMIT_S = 30.0  # a fork and its pid: anything slower means the zygote is broken


def start(current: Zygote | bool | None, device: str, threads: int) -> Zygote | bool:
    """A zygote for a run on `device`, or False (fresh workers): CPU runs only (a process that touched CUDA
    must not fork), not with ATTNBENCH_ZYGOTE=0, and not once one failed to start (`current` False)."""
    if current is not None:
        return current
    if device != "cpu" or os.environ.get("ATTNBENCH_ZYGOTE", "1") == "0":
        return False
    from attnbench.isolate import STARTUP_LIMIT_S

    try:
        return Zygote(threads, STARTUP_LIMIT_S)
    except OSError:
        return False


class Zygote:
    """Runner side of the warm worker parent."""

    def __init__(self, threads: int, startup_limit_s: float) -> None:
        from attnbench.isolate import PARENT_ENV, RESULT_FD_ENV

        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {**os.environ, "ATTNBENCH_THREADS": str(threads), ZYGOTE_FD_ENV: str(theirs.fileno()),
               PARENT_ENV: str(os.getpid())}
        env.pop(RESULT_FD_ENV, None)
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "attnbench.worker", "--zygote"],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, env=env, pass_fds=(theirs.fileno(),),
                                         start_new_session=True)
        finally:
            theirs.close()
        if self.receive(startup_limit_s) != ["ready"]:
            self.close()
            raise OSError("the warm worker parent did not start")

    def receive(self, limit_s: float | None) -> list[str] | None:
        """The next message's words; None after `limit_s` or when the zygote is gone."""
        deadline = None if limit_s is None else time.monotonic() + limit_s
        while True:
            wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if wait <= 0:
                return None
            if select.select([self.sock], [], [], wait)[0]:
                try:
                    data = self.sock.recv(4096)
                except OSError:
                    return None
                return data.decode().split() if data else None
            if self.proc.poll() is not None:
                return None

    def spawn(self, case_json: str, result_fd: int, log: IO[bytes]) -> Child | None:
        """Fork a worker for one case; None when the zygote is broken (then it is closed)."""
        try:
            socket.send_fds(self.sock, [case_json.encode()], [result_fd, log.fileno()])
            answer = self.receive(ANSWER_LIMIT_S)
        except OSError:
            answer = None
        if not answer or answer[0] != "pid":
            self.close()
            return None
        return Child(int(answer[1]), self)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        """Kill the zygote (and so its children); returns None."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.sock.close()


class Child:
    """A forked worker, as much of `subprocess.Popen` as `run_isolated` uses (pid, poll, wait)."""

    def __init__(self, pid: int, zygote: Zygote) -> None:
        self.pid, self.zygote, self.returncode = pid, zygote, None
        self.stdin = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self._collect(0.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._collect(timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0)
        return self.returncode

    def _collect(self, timeout: float | None) -> None:
        answer = self.zygote.receive(1e-3 if timeout == 0 else timeout)
        if answer and answer[0] == "exit":
            self.returncode = int(answer[1])
        elif answer is None and not self.zygote.alive:  # the zygote died: its children get SIGKILL
            self.returncode = -signal.SIGKILL


# -- zygote side ----------------------------------------------------------------------------------
def serve(run_case_json: Any) -> None:
    """The zygote's loop (imports done): fork one child per case, report its pid and exit code."""
    from attnbench.isolate import PARENT_ENV, RESULT_FD_ENV, die_with_parent

    sock = socket.socket(fileno=int(os.environ.pop(ZYGOTE_FD_ENV)))
    sock.send(b"ready")
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 1 << 20, 2)
        except OSError:
            os._exit(0)
        if not msg or len(fds) != 2:
            os._exit(0)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the case's worker
            try:
                sock.close()
                os.setpgid(0, 0)
                result_fd, log_fd = fds
                os.dup2(log_fd, 1)
                os.dup2(log_fd, 2)
                os.close(log_fd)
                os.environ[RESULT_FD_ENV] = str(result_fd)
                os.environ[PARENT_ENV] = str(os.getppid())
                die_with_parent()
                run_case_json(msg.decode())
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(0)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        for fd in fds:
            os.close(fd)
        sock.send(f"pid {pid}".encode())
        _, status = os.waitpid(pid, 0)
        sock.send(f"exit {os.waitstatus_to_exitcode(status)}".encode())
