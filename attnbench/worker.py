"""`python -m attnbench.worker`: run one case (JSON on stdin) in a fresh process (`--isolate`); with
`--zygote`, import once and fork one such worker per case (`attnbench.zygote`).

The result goes to the pipe the parent names in ATTNBENCH_RESULT_FD (see `attnbench.isolate`), so
whatever the case prints cannot corrupt it: `ready` once imports are done, then `rows <json>`. Every
exception, SystemExit and KeyboardInterrupt included, becomes a status row; SIGTERM and SIGKILL from
the parent still end the process (no handler is installed for them).
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os

from attnbench.isolate import die_with_parent, row_to_json, send


def _imports() -> None:
    """What every case needs, done before the case's clock starts (once per zygote with --zygote)."""
    import torch

    from attnbench.registry import load_plugins

    if os.environ.get("ATTNBENCH_THREADS"):
        torch.set_num_threads(int(os.environ["ATTNBENCH_THREADS"]))
    load_plugins()


def run_case_json(text: str) -> None:
    """Run one case (its JSON) and report `ready`, then `rows`, on the result pipe."""
    import torch

    from attnbench.registry import METHODS, SUITES
    from attnbench.runner import classify
    from attnbench.suite import Case, ResolvedCase, status_row

    case = Case.from_json(text)
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


def main() -> None:
    die_with_parent()
    faulthandler.enable(all_threads=True)  # a crash leaves "Fatal Python error" and the frame in the log
    import sys

    _imports()
    if "--zygote" in sys.argv[1:]:  # a warm parent that forks one worker per case (attnbench.zygote)
        import importlib

        from attnbench.zygote import WARM_MODULES, serve

        for name in WARM_MODULES:  # what a case's first call imports lazily (~1 s), imported once
            with contextlib.suppress(Exception):
                importlib.import_module(name)
        serve(run_case_json)
        return
    run_case_json(sys.stdin.read())


if __name__ == "__main__":
    main()
