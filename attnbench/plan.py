"""`attnbench run` before anything runs: the command line's overrides, and the `--dry-run` plan.

`describe` summarises a planned run per suite (cases, methods, backends, workloads, timing budget,
cases already done with --resume) with a rough time estimate from the budgets: kernel suites that time
a call take about warm-up + min_time_s per case (less when max_reps is reached first); proxy suites
stop training at their wall cap (per learning rate). It reads and writes nothing but the results
folder's existing parts (with --resume).
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from attnbench.runner import Runner
    from attnbench.suite import Case

TIMING_KEYS = ("min_time_s", "max_reps", "warmup_s")
PROXY_KEYS = ("wall_cap_s", "steps", "epochs", "densities")  # densities: the sparse methods' ladder
UNTIMED_CASE_S = 0.05  # a kernel suite that measures one call (flops, memory, correctness): nominal


def split(values: list[str] | None) -> list[str]:
    """`--methods a,b --methods c` → [a, b, c]."""
    return [x.strip() for v in values or [] for x in v.split(",") if x.strip()]


def overrides(set_: list[str] | None, lists: dict[str, list[str] | None], device: str | None,
              param: list[str] | None, known_method: Any) -> tuple[list[str], set[str]]:
    """Preset overrides from the run options, and the methods given explicit --param values.
    `known_method(name)` raises for an unknown method; a malformed --param raises ValueError."""
    out = list(set_ or [])
    for key, values in lists.items():
        if values:
            out.append(f"{key}={json.dumps(split(values))}")
    if device:
        out.append(f"device={json.dumps(device)}")
    explicit = set()
    for item in param or []:
        name, _, rest = item.partition(".")
        if not rest or "=" not in rest:
            raise ValueError(f"--param {item!r} is not of the form method.key=value")
        known_method(name)
        out.append(f"shapes.params.{name}.{rest}")
        explicit.add(name)
    return out, explicit


def parse_shard(shard: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in shard.split("/"))
        if not 1 <= i <= n:
            raise ValueError
    except ValueError:
        raise ValueError(f"--shard {shard!r} must be i/n with 1 ≤ i ≤ n") from None
    return i, n


def check_numbers(*, timeout: float | None, budget: float | None, threads: int | None) -> None:
    for name, value in (("--timeout", timeout), ("--budget", budget)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number of seconds, got {value:g}")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")


def writable_folder(folder: Path) -> list[Path]:
    """Create `folder` if needed and check it takes files; returns the folders it created (ValueError if not)."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"-o {folder} is a file, not a folder")
    created = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    probe = folder / f".attnbench-probe-{uuid.uuid4().hex[:8]}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        remove_empty(created)
        raise ValueError(f"-o {folder} is not a writable folder: {exc.strerror or exc}") from None
    return created


def remove_empty(created: list[Path]) -> None:
    """Remove the folders `writable_folder` created (deepest first), as long as they are empty."""
    for p in reversed(created):
        try:
            p.rmdir()
        except OSError:
            break


def _compact(names: Iterable[str], show: int = 6) -> list[str]:
    names = sorted(set(names))
    return names if len(names) <= show else [*names[:show], f"… {len(names) - show} more"]


def _suite_budget(suite: Any, preset: Any) -> tuple[dict[str, Any], float | None, str]:
    """(budget keys, seconds per case or None, how the estimate is made) of one suite."""
    try:
        s = suite.settings(preset) if hasattr(suite, "settings") else None
    except Exception:  # noqa: BLE001 — the plan already validated the settings; nothing to estimate from
        s = None
    if s is None:
        return {}, None, "no budget known"
    if getattr(suite, "kind", "kernel") == "proxy":
        budget = {k: getattr(s, k) for k in PROXY_KEYS if getattr(s, k, None) is not None}
        lrs = getattr(s, "lrs", None) or (None,)
        if "wall_cap_s" in budget:
            n = len(lrs) if isinstance(lrs, list | tuple) else 1
            return budget, float(budget["wall_cap_s"]) * n, f"≤ wall cap{' × lrs' if n > 1 else ''} a case"
        return budget, None, "no wall cap"
    budget = {k: getattr(s, k) for k in TIMING_KEYS if getattr(s, k, None) is not None}
    try:
        timed = any(k in suite.options(s, dict.fromkeys(TIMING_KEYS)) for k in TIMING_KEYS)
    except Exception:  # noqa: BLE001
        timed = True
    if timed and budget:
        per = float(budget.get("warmup_s", 0.0)) + float(budget.get("min_time_s", 0.0))
        return budget, per, "warm-up + min_time_s a case, or less"
    return {}, UNTIMED_CASE_S, "one call a case, nominal"


def describe(runner: Runner, cases: list[Case]) -> dict[str, Any]:
    """The resolved plan of `runner` (already planned `cases`) as plain data."""
    from attnbench import results
    from attnbench.registry import SUITES

    done = results.done_case_ids(runner.out_dir) if runner.resume else set()
    suites, total = [], 0.0
    for name in dict.fromkeys(c.suite for c in cases):
        mine = [c for c in cases if c.suite == name]
        suite = SUITES.get(name)
        budget, per, how = _suite_budget(suite, runner.preset)
        n_done = sum(c.case_id in done for c in mine)
        est = None if per is None else per * (len(mine) - n_done)
        total += est or 0.0
        suites.append({"suite": name, "kind": getattr(suite, "kind", ""), "cases": len(mine), "done": n_done,
                       "methods": sorted({c.method for c in mine}),
                       "backends": sorted({str(c.backend) for c in mine}),
                       "workloads": _compact(c.workload.id for c in mine), "budget": budget,
                       "estimate_s": est, "estimate": how})
    i, n = runner.shard
    return {"preset": runner.preset.name, "device": runner.device, "out": str(runner.out_dir),
            "shard": f"{i}/{n}", "isolate": runner.isolate, "timeout_s": runner.timeout_s,
            "budget_s": runner.budget_s, "cases": len(cases), "done": sum(s["done"] for s in suites),
            "estimate_s": total, "suites": suites}


def _duration(s: float | None) -> str:
    if s is None:
        return "?"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def render(plan: dict[str, Any], console: Console) -> None:
    """The plan as a table (nothing has run, nothing was written)."""
    from rich.table import Table

    table = Table(title=f"dry run: preset {plan['preset']} on {plan['device']}, shard {plan['shard']}")
    for col in ("suite", "cases", "done", "methods", "backends", "workloads", "budget", "estimate"):
        table.add_column(col, overflow="fold")
    for s in plan["suites"]:
        methods = _compact(s["methods"], 4)
        budget = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in s["budget"].items())
        table.add_row(s["suite"], str(s["cases"]), str(s["done"]), f"{len(s['methods'])}: {', '.join(methods)}",
                      ", ".join(s["backends"]), "\n".join(s["workloads"]), budget or "-",
                      f"~{_duration(s['estimate_s'])} ({s['estimate']})")
    console.print(table)
    limits = "".join(f", {k} {plan[k]:g} s" for k in ("timeout_s", "budget_s") if plan[k])
    console.print(f"{plan['cases']} cases ({plan['done']} already done), rough estimate "
                  f"~{_duration(plan['estimate_s'])}{', isolated' if plan['isolate'] else ''}{limits}; "
                  f"nothing was run or written (→ {plan['out']})", highlight=False, markup=False)
