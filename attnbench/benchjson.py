"""pytest-benchmark bridge: `--benchmark-json` files as rows of the results schema.

Each benchmark becomes one `latency_ms` row (median, p20/p80 from the raw data when the file was
saved with `--benchmark-save-data`, else the quartiles q1/q3), in suite `pytest_benchmark`.
Keys of a benchmark's `extra_info` that name schema columns (method, backend, seq_len, ...) fill
those columns; the rest go into `params`. `load_inputs` reads Parquet results and such JSON files
side by side, so `report` and `compare` take either.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attnbench import results

SUITE = "pytest_benchmark"
_INT_COLUMNS = {
    "batch",
    "heads",
    "kv_heads",
    "seq_len",
    "seq_kv",
    "head_dim",
    "num_threads",
    "seed",
    "suite_version",
}
_FIXED = {
    "run_id",
    "created_at",
    "suite",
    "case_id",
    "metric",
    "value",
    "unit",
    "stat",
    "n",
    "p20",
    "p80",
    "samples",
    "status",
    "error",
}


class BenchJsonError(ValueError):
    """A file that is not pytest-benchmark JSON output."""


def _percentile(data: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(data, dtype=float), q))


def _created_at(doc: dict[str, Any]) -> datetime:
    raw = doc.get("datetime")
    try:
        ts = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        return datetime.now(UTC)
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def rows_from_benchmark_json(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows (dicts with exactly `attnbench.results.COLUMNS`) for one `--benchmark-json` file.

    Raises:
        BenchJsonError: the file is not JSON or has no `benchmarks` list.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BenchJsonError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), list):
        raise BenchJsonError(f"{path}: no 'benchmarks' list; is it pytest-benchmark --benchmark-json output?")
    machine = doc.get("machine_info") or {}
    commit = doc.get("commit_info") or {}
    created = _created_at(doc)
    run_id = "pb-" + hashlib.sha1(f"{path.resolve()}|{doc.get('datetime')}".encode()).hexdigest()[:12]
    cpu = machine.get("cpu") or {}
    base: dict[str, Any] = dict.fromkeys(results.COLUMNS)
    base.update(
        run_id=run_id,
        created_at=created,
        suite=SUITE,
        suite_version=1,
        status="ok",
        error="",
        device_kind="cpu",
        device_name=str(cpu.get("brand_raw") or machine.get("processor") or ""),
        hostname=str(machine.get("node") or ""),
        git_sha=str(commit.get("id") or "")[:12],
        preset="pytest-benchmark",
        unit="ms",
        stat="median",
        metric="latency_ms",
    )
    rows = []
    for bench in doc["benchmarks"]:
        stats = bench.get("stats") or {}
        extra = dict(bench.get("extra_info") or {})
        params = dict(bench.get("params") or {})
        row = dict(base)
        for key in list(extra):
            if key in results.COLUMNS and key not in _FIXED:
                val = extra.pop(key)
                try:
                    row[key] = int(val) if key in _INT_COLUMNS and val is not None else val
                except (TypeError, ValueError, OverflowError):
                    raise BenchJsonError(f"{path}: extra_info {key}={val!r} is not an integer") from None
        params.update(extra)
        name = str(bench.get("fullname") or bench.get("name") or "")
        row["method"] = row["method"] or str(bench.get("group") or bench.get("name") or "benchmark")
        row["backend"] = row["backend"] or "pytest"
        row["workload_id"] = row["workload_id"] or str(bench.get("name") or name)
        row["params"] = json.dumps(params, sort_keys=True, default=str)
        row["case_id"] = hashlib.sha1(f"{SUITE}|{name}|{row['params']}".encode()).hexdigest()[:16]
        data = [float(x) * 1e3 for x in stats.get("data") or []]
        if data:
            row.update(samples=data, p20=_percentile(data, 20), p80=_percentile(data, 80))
        else:
            row.update(samples=None, p20=_ms(stats.get("q1")), p80=_ms(stats.get("q3")))
        row["value"] = _ms(stats.get("median"))
        row["n"] = int(stats.get("rounds") or len(data) or 0)
        if row["value"] is None:
            row.update(
                status="error",
                error="benchmark has no median (did it fail?)",
                metric="status",
                unit="",
                stat="value",
            )
        rows.append(row)
    return rows


def _ms(seconds: Any) -> float | None:
    return None if seconds is None else float(seconds) * 1e3


def load_inputs(
    paths: Iterable[str | os.PathLike[str]],
    *,
    latest_only: bool = True,
    skip_corrupt: bool = True,
    allow_empty: bool = False,
) -> pd.DataFrame:
    """Rows under `paths`: Parquet results files/folders, and pytest-benchmark `*.json` files given by name.

    Like `attnbench.results.load` (same schema check, de-duplication and `latest_only` per device),
    plus the benchmark JSON files. With `skip_corrupt`, a corrupt Parquet file is skipped with a
    `results.SkippedFileWarning` naming it (unless no file is readable); without, it raises.

    Raises:
        attnbench.results.SchemaError / BenchJsonError / FileNotFoundError on unusable input;
        attnbench.results.NoResultsError (a FileNotFoundError) when there are no rows at all,
        unless `allow_empty`.
    """
    frames, bad = [], []
    paths = [Path(p) for p in paths]
    for f in results.files(paths):
        if f.suffix == ".json":
            try:
                frames.append(results.to_table(rows_from_benchmark_json(f)).to_pandas())
            except results.SchemaError as exc:
                raise BenchJsonError(f"{f}: {exc}") from None
            continue
        try:
            frames.append(results.read_file(f))
        except results.CorruptFileError as exc:
            if not skip_corrupt:
                raise
            bad.append(exc)
    results.warn_skipped(bad, readable=len(frames))
    df = results.merge(frames, latest_only=latest_only)
    if df.empty and not allow_empty:
        where = ", ".join(map(str, paths)) or "(no inputs)"
        raise results.NoResultsError(f"no result rows under {where}")
    return df
