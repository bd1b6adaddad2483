"""`python -m attnbench.worker`: run one case (JSON on stdin) in a fresh process (`--isolate`)."""

from __future__ import annotations

import json
import os
import sys

import torch

from attnbench.registry import METHODS, SUITES, load_plugins
from attnbench.runner import classify, row_to_json
from attnbench.suite import Case, ResolvedCase, status_row


def main() -> None:
    if os.environ.get("ATTNBENCH_THREADS"):
        torch.set_num_threads(int(os.environ["ATTNBENCH_THREADS"]))
    load_plugins()
    case = Case.from_json(sys.stdin.read())
    torch.manual_seed(case.seed)
    try:
        rows = SUITES.get(case.suite).run(ResolvedCase.resolve(case, METHODS))
    except Exception as exc:  # noqa: BLE001 — reported as a status row
        rows = [status_row(*classify(exc))]
    print(json.dumps([row_to_json(r) for r in rows]))


if __name__ == "__main__":
    main()
