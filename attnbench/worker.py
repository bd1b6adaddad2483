"""`python -m attnbench.worker`: run one case (JSON on stdin) in a fresh process (`--isolate`).

The result goes to the pipe the parent names in ATTNBENCH_RESULT_FD (see `attnbench.isolate`), so
whatever the case prints cannot corrupt it: `ready` once imports are done, then `rows <json>`. Every
exception, SystemExit and KeyboardInterrupt included, becomes a status row; SIGTERM and SIGKILL from
the parent still end the process (no handler is installed for them).
"""

from __future__ import annotations

import faulthandler
import json
import os

from attnbench.isolate import die_with_parent, row_to_json, send


def main() -> None:
    die_with_parent()
    faulthandler.enable(all_threads=True)  # a crash leaves "Fatal Python error" and the frame in the log
    import sys

    import torch

    from attnbench.registry import METHODS, SUITES, load_plugins
    from attnbench.runner import classify
    from attnbench.suite import Case, ResolvedCase, status_row

    if os.environ.get("ATTNBENCH_THREADS"):
        torch.set_num_threads(int(os.environ["ATTNBENCH_THREADS"]))
    load_plugins()
    case = Case.from_json(sys.stdin.read())
    try:
        rc = ResolvedCase.resolve(case, METHODS)
        suite = SUITES.get(case.suite)
        torch.manual_seed(case.seed)
        send("ready")  # the parent's clock for this case starts now
        rows = suite.run(rc)
    except BaseException as exc:  # noqa: BLE001 — every fault, exits included, is reported as a status row
        send("ready")
        rows = [status_row(*classify(exc))]
    send("rows", json.dumps([row_to_json(r) for r in rows]))


if __name__ == "__main__":
    main()
