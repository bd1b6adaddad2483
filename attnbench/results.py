"""Long-format results: one row per (case, metric), typed by one pyarrow schema.

Each finished case is written as its own Parquet part file (temp file + rename), so a killed run
loses at most the case in flight; a value that does not fit its column, or a full disk, fails the
write before any part appears. `load()` merges any number of folders/files and keeps, for each
case, the rows of its latest run; a corrupt file is skipped with a `SkippedFileWarning` naming it
(unless nothing readable remains). `compact()` merges a folder's parts into one file through the
same reader, and removes them only once the merged file is written, re-read and counted.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
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
    """A results file this version cannot read (or rows that do not fit the schema)."""


class CorruptFileError(SchemaError):
    """A file that is not readable Parquet (truncated, half-written, foreign bytes)."""


class NoResultsError(FileNotFoundError):
    """The inputs hold no result rows at all."""


class OutputError(OSError):
    """Results cannot be written where asked: the path is a file, read-only, or the disk is full."""


class SkippedFileWarning(UserWarning):
    """A corrupt results file was skipped (the message names it)."""


def to_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """Rows (dicts with exactly the schema's columns) → a typed table.

    Raises:
        SchemaError: extra or missing keys, or a value that does not fit its column's type
            (e.g. an int beyond int64, an `n` beyond int32); the message names the column.
    """
    for r in rows:
        if set(r) != set(COLUMNS):
            extra, missing = set(r) - set(COLUMNS), set(COLUMNS) - set(r)
            raise SchemaError(f"row does not match schema: extra={sorted(extra)} missing={sorted(missing)}")
    try:
        return pa.Table.from_pylist(list(rows), schema=SCHEMA)
    except (ValueError, TypeError, OverflowError) as exc:  # pa.ArrowInvalid / ArrowTypeError included
        raise _bad_value(rows, exc) from None


def _bad_value(rows: Sequence[dict[str, Any]], exc: Exception) -> SchemaError:
    """The first column (and row) whose value does not convert to the column's type."""
    for field in SCHEMA:
        for i, r in enumerate(rows):
            try:
                pa.array([r[field.name]], type=field.type)
            except (ValueError, TypeError, OverflowError) as err:
                value = repr(r[field.name])
                value = value if len(value) <= 60 else value[:57] + "..."
                return SchemaError(f"column {field.name!r} ({field.type}): value {value} in row {i} "
                                   f"does not fit ({err})")
    return SchemaError(f"rows do not fit the results schema: {exc}")


def complete_row(partial: dict[str, Any], **context: Any) -> dict[str, Any]:
    """A schema row from a partial one: `context` fills columns the row lacks, the rest are null."""
    row = {c: None for c in COLUMNS}
    row.update(context)
    row.update({k: v for k, v in partial.items() if k in row})
    return row


def write_part(folder: str | os.PathLike[str], rows: Sequence[dict[str, Any]], *, run_id: str) -> Path:
    """Atomically write one part file into `folder` and return its path.

    Raises:
        SchemaError: a row does not fit the schema (nothing is written).
        OutputError: the folder cannot be created or written, e.g. the disk is full (no part is left).
    """
    table = to_table(rows)  # before touching the disk: a bad value leaves nothing behind
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(_why(folder, exc)) from exc
    final = folder / f"part-{run_id}-{uuid.uuid4().hex[:12]}.parquet"
    _write_atomic(table, final)
    return final


def _write_atomic(table: pa.Table, final: Path, *, verify: bool = False) -> None:
    """Write `table` to a hidden temp file next to `final`, fsync, optionally re-read it and check its
    row count, then rename it to `final`; on any failure the temp file is removed."""
    tmp = final.with_name(f".{final.name}.tmp")
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        if verify and (got := read_table(tmp).num_rows) != table.num_rows:
            raise SchemaError(f"{final}: wrote {table.num_rows} rows but read back {got}; nothing changed")
        os.replace(tmp, final)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise OutputError(_why(final, exc)) from exc
        raise
    _fsync_dir(final.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not supported on every filesystem
    finally:
        os.close(fd)


def _why(path: Path, exc: OSError) -> str:
    """A one-line reason a path cannot be written."""
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"cannot write to {path}: the disk is full ({exc.strerror or exc})"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write to {path}: it is read-only ({exc.strerror or exc})"
    if code in (errno.EEXIST, errno.ENOTDIR):
        return f"cannot write to {path}: a file is in the way of the results folder"
    return f"cannot write to {path}: {exc.strerror or exc}"


MIN_FREE_BYTES = 1 << 20  # below this, `probe_writable` calls the disk full


def probe_writable(folder: str | os.PathLike[str]) -> None:
    """Check that results can be written into `folder` (created if missing) before a run starts.

    Raises:
        OutputError: one line saying why: the path is a file, read-only, or the disk is full.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"cannot write to {folder}: it is a file, not a results folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_probe(folder / f".probe-{uuid.uuid4().hex[:12]}.tmp")
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        raise OutputError(_why(folder, exc)) from exc
    if free < MIN_FREE_BYTES:
        raise OutputError(f"cannot write to {folder}: the disk is full ({free} bytes free)")


def _write_probe(path: Path) -> None:
    try:
        with open(path, "wb") as fh:
            fh.write(b"\0" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        path.unlink(missing_ok=True)


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


def read_table(path: Path) -> pa.Table:
    """One results file as an Arrow table, through the version checks every reader uses.

    Columns a minor version added after the file was written are filled with nulls; columns of a
    newer minor version than ours are kept after the schema's own. The metadata holds the file's
    schema version.

    Raises:
        CorruptFileError: not readable Parquet.
        SchemaError: no schema version, a foreign major version, or missing columns.
    """
    try:
        table = pq.read_table(path)
    except Exception as exc:  # a truncated or foreign file
        raise CorruptFileError(f"{path}: not a readable Parquet results file ({exc})") from exc
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
    extra = [c for c in table.column_names if c not in SCHEMA.names]
    return table.select(COLUMNS + extra).replace_schema_metadata({_META_KEY: version.encode()})


def read_file(path: Path) -> pd.DataFrame:
    """One results file as a DataFrame of the schema's columns (see `read_table` for the checks)."""
    return read_table(path).select(COLUMNS).to_pandas()


def warn_skipped(bad: Sequence[CorruptFileError], *, readable: int) -> None:
    """Warn (`SkippedFileWarning`) about each corrupt file skipped; raise if nothing readable remains."""
    if bad and not readable:
        raise CorruptFileError("no readable results file: " + "; ".join(map(str, bad)))
    for exc in bad:
        warnings.warn(f"skipped {exc}", SkippedFileWarning, stacklevel=3)


@contextmanager
def skipped_files() -> Iterator[list[str]]:
    """Collect the messages of the `SkippedFileWarning`s raised inside the block (not printed)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkippedFileWarning)
        out: list[str] = []
        try:
            yield out
        finally:
            out.extend(str(w.message) for w in caught if issubclass(w.category, SkippedFileWarning))
            for w in caught:
                if not issubclass(w.category, SkippedFileWarning):
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def load(
    paths: Iterable[str | os.PathLike[str]], *, latest_only: bool = True, skip_corrupt: bool = True
) -> pd.DataFrame:
    """All rows under `paths`; with `latest_only`, each case keeps only its latest run's rows.

    A corrupt file is skipped with a `SkippedFileWarning` (with `skip_corrupt`), unless no file is
    readable. An empty folder gives an empty frame.
    """
    frames, bad = [], []
    for f in files(paths):
        try:
            frames.append(read_file(f))
        except CorruptFileError as exc:
            if not skip_corrupt:
                raise
            bad.append(exc)
    warn_skipped(bad, readable=len(frames))
    return merge(frames, latest_only=latest_only)


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
    try:
        df = load([folder])
    except CorruptFileError as exc:  # every part is corrupt: nothing counts as done
        warnings.warn(str(exc), SkippedFileWarning, stacklevel=2)
        return set()
    if df.empty:
        return set()
    bad = set(df.loc[df["status"] != "ok", "case_id"])
    return set(df["case_id"]) - bad


def compact(folder: str | os.PathLike[str]) -> Path:
    """Merge the part files of `folder` into one `results-<id>.parquet` and return its path.

    Every part goes through `read_table` (the readers' checks). Columns of a newer minor version are
    kept, and the merged file carries the newest minor version among its inputs (at least ours);
    older parts get the columns they lack as nulls. The merged file is written to a temp file,
    re-read and its row count checked, then renamed; only then are the merged parts removed.
    A corrupt part is left in place and named in a `SkippedFileWarning`.

    Raises:
        FileNotFoundError: no part files.
        SchemaError: a part of a foreign major version, without version or columns, or parts that
            cannot be merged; CorruptFileError: no part is readable. Nothing is changed.
        OutputError: the merged file cannot be written (nothing is changed).
    """
    folder = Path(folder)
    parts = sorted(folder.glob("part-*.parquet"))
    if not parts:
        raise FileNotFoundError(f"no part files in {folder}")
    tables: list[pa.Table] = []
    read: list[Path] = []
    bad: list[CorruptFileError] = []
    for p in parts:
        try:
            tables.append(_typed(p, read_table(p)))
            read.append(p)
        except CorruptFileError as exc:
            bad.append(exc)
    if not tables:
        raise CorruptFileError(f"{folder}: no readable part file, nothing compacted: " + "; ".join(map(str, bad)))
    try:
        merged = pa.concat_tables(tables, promote_options="default")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise SchemaError(f"{folder}: parts cannot be merged, nothing compacted ({exc})") from None
    versions = [t.schema.metadata[_META_KEY].decode() for t in tables] + [SCHEMA_VERSION]
    merged = merged.replace_schema_metadata({_META_KEY: max(versions, key=_version_key).encode()})
    final = folder / f"results-{uuid.uuid4().hex[:12]}.parquet"
    _write_atomic(merged, final, verify=True)
    for p in read:
        p.unlink()
    warn_skipped(bad, readable=len(tables))
    return final


def _typed(path: Path, table: pa.Table) -> pa.Table:
    """`table` with the schema's columns cast to the schema's types (extra columns as they are)."""
    extra = [table.schema.field(c) for c in table.column_names[len(COLUMNS):]]
    try:
        return table.cast(pa.schema([*SCHEMA, *extra], metadata=table.schema.metadata))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise SchemaError(f"{path}: a column does not fit the schema's type, nothing compacted ({exc})") from None


def _version_key(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in version.split("."))
    except ValueError:
        return (-1,)
