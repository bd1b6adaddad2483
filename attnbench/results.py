"""Long-format results: one row per (case, metric), typed by one pyarrow schema.

Each finished case is written as its own Parquet part file (temp file + rename), so a killed run
loses at most the case in flight. `load()` merges any number of folders/files and keeps, for each
case, the rows of its latest run; `compact()` merges a folder's parts into one file.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = "1.1"
_META_KEY = b"attnbench.schema_version"

SCHEMA = pa.schema([
    ("run_id", pa.string()), ("created_at", pa.timestamp("us", tz="UTC")),
    ("suite", pa.string()), ("suite_version", pa.int32()), ("case_id", pa.string()),
    ("method", pa.string()), ("family", pa.string()), ("backend", pa.string()),
    ("params", pa.string()), ("workload_id", pa.string()),
    ("batch", pa.int32()), ("heads", pa.int32()), ("kv_heads", pa.int32()),
    ("seq_len", pa.int64()), ("seq_kv", pa.int64()), ("head_dim", pa.int32()),
    ("dtype", pa.string()), ("causal", pa.bool_()), ("mode", pa.string()),
    ("metric", pa.string()), ("value", pa.float64()), ("unit", pa.string()), ("stat", pa.string()),
    ("n", pa.int32()), ("p20", pa.float64()), ("p80", pa.float64()),
    ("samples", pa.list_(pa.float64())),
    ("status", pa.string()), ("error", pa.string()),
    ("device_kind", pa.string()), ("device_name", pa.string()), ("device_capability", pa.string()),
    ("num_threads", pa.int32()), ("torch_version", pa.string()), ("triton_version", pa.string()),
    ("attnbench_version", pa.string()), ("git_sha", pa.string()), ("hostname", pa.string()),
    ("seed", pa.int64()), ("preset", pa.string()),
    ("options", pa.string()),  # 1.1: the case's suite options (JSON), e.g. a proxy's positional scheme
], metadata={_META_KEY: SCHEMA_VERSION.encode()})
COLUMNS: list[str] = SCHEMA.names
# Columns added by a minor version: older files of the same major version read them as null.
ADDED_IN_MINOR = {"options": "1.1"}


class SchemaError(ValueError):
    """A results file this version cannot read."""


def to_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """Rows (dicts with exactly the schema's columns) → a typed table; extra or missing keys raise."""
    for r in rows:
        if set(r) != set(COLUMNS):
            extra, missing = set(r) - set(COLUMNS), set(COLUMNS) - set(r)
            raise SchemaError(f"row does not match schema: extra={sorted(extra)} missing={sorted(missing)}")
    return pa.Table.from_pylist(list(rows), schema=SCHEMA)


def complete_row(partial: dict[str, Any], **context: Any) -> dict[str, Any]:
    """A schema row from a partial one: `context` fills columns the row lacks, the rest are null."""
    row = {c: None for c in COLUMNS}
    row.update(context)
    row.update({k: v for k, v in partial.items() if k in row})
    return row


def write_part(folder: str | os.PathLike[str], rows: Sequence[dict[str, Any]], *, run_id: str) -> Path:
    """Atomically write one part file into `folder` and return its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = to_table(rows)
    final = folder / f"part-{run_id}-{uuid.uuid4().hex[:12]}.parquet"
    tmp = folder / f".{final.name}.tmp"
    pq.write_table(table, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    return final


# Columns that identify one row of a run: a case may emit several rows per metric (Row.extra
# overrides seq_len/params, e.g. scaling per N, NIAH per length and depth).
ROW_IDENTITY = ["run_id", "case_id", "metric", "stat", "batch", "heads", "kv_heads", "seq_len", "seq_kv",
                "head_dim", "dtype", "causal", "mode", "params"]


def files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Parquet files under the given folders, and the given files themselves."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*.parquet") if not f.name.startswith(".")))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"no results at {p}")
    return out


def read_file(path: Path) -> pd.DataFrame:
    """One Parquet file as a DataFrame, refusing unknown schema major versions."""
    try:
        table = pq.read_table(path)
    except Exception as exc:  # a truncated or foreign file
        raise SchemaError(f"{path}: not a readable Parquet results file ({exc})") from exc
    version = (table.schema.metadata or {}).get(_META_KEY, b"").decode()
    if not version:
        raise SchemaError(f"{path}: no attnbench schema version in its metadata")
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise SchemaError(f"{path}: schema {version} is not readable by this attnbench "
                          f"(reads {SCHEMA_VERSION.split('.')[0]}.x); upgrade attnbench")
    missing = set(COLUMNS) - set(table.column_names)
    if missing - set(ADDED_IN_MINOR):
        raise SchemaError(f"{path}: missing columns {sorted(missing)}")
    for name in sorted(missing):
        table = table.append_column(SCHEMA.field(name), pa.nulls(len(table), SCHEMA.field(name).type))
    return table.select(COLUMNS).to_pandas()


def load(paths: Iterable[str | os.PathLike[str]], *, latest_only: bool = True) -> pd.DataFrame:
    """All rows under `paths`; with `latest_only`, each case keeps only its latest run's rows."""
    return merge([read_file(f) for f in files(paths)], latest_only=latest_only)


def merge(frames: Sequence[pd.DataFrame], *, latest_only: bool = True) -> pd.DataFrame:
    """Concatenate result frames, drop repeated rows; with `latest_only`, each case keeps only its
    latest run's rows on each device (two GPU generations share case ids, not results)."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return to_table([]).to_pandas()
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    ident = df[ROW_IDENTITY].astype(object).where(df[ROW_IDENTITY].notna(), None).astype(str)
    df = df[~ident.duplicated(keep="last")]
    if latest_only and len(df):
        last = df.groupby(["case_id", df["device_name"].fillna("")])["created_at"].transform("max")
        df = df[df["created_at"] == last]
    return df.reset_index(drop=True)


def done_case_ids(folder: str | os.PathLike[str]) -> set[str]:
    """Case ids already finished with status ok under `folder` (for --resume)."""
    if not Path(folder).exists():
        return set()
    df = load([folder])
    if df.empty:
        return set()
    bad = set(df.loc[df["status"] != "ok", "case_id"])
    return set(df["case_id"]) - bad


def compact(folder: str | os.PathLike[str]) -> Path:
    """Merge every part file of `folder` into one `results-<n>.parquet`; parts are removed."""
    folder = Path(folder)
    parts = sorted(folder.glob("part-*.parquet"))
    if not parts:
        raise FileNotFoundError(f"no part files in {folder}")
    table = pa.concat_tables(pq.read_table(p).select(COLUMNS).cast(SCHEMA) for p in parts)
    final = folder / f"results-{uuid.uuid4().hex[:12]}.parquet"
    tmp = folder / f".{final.name}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, final)
    for p in parts:
        p.unlink()
    return final
