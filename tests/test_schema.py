"""Results schema: Parquet round-trip, version refusal, atomic parts, de-duplication, compaction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attnbench import results


def row(**kw: object) -> dict:
    base = {c: None for c in results.COLUMNS}
    base.update(run_id="r1", created_at=datetime(2026, 1, 1, tzinfo=UTC), suite="latency", suite_version=1,
                case_id="c1", method="mha", family="dense", backend="sdpa", params="{}", workload_id="w",
                batch=1, heads=4, kv_heads=4, seq_len=128, seq_kv=128, head_dim=64, dtype="float32",
                causal=False, mode="fwd", metric="latency_ms", value=1.5, unit="ms", stat="median", n=3,
                p20=1.4, p80=1.6, samples=[1.4, 1.5, 1.6], status="ok", error="", device_kind="cpu",
                device_name="cpu", device_capability="", num_threads=2, torch_version="2.13",
                triton_version="", attnbench_version="0.1.0", git_sha="abc", hostname="h", seed=0,
                preset="smoke")
    base.update(kw)
    return base


def test_round_trip_with_pandas_and_pyarrow(tmp_path: Path) -> None:
    path = results.write_part(tmp_path, [row(), row(metric="setup_ms", samples=None)], run_id="r1")
    table = pq.read_table(path)
    assert table.schema.metadata[b"attnbench.schema_version"] == results.SCHEMA_VERSION.encode()
    assert table.schema.equals(results.SCHEMA, check_metadata=False)
    df = pd.read_parquet(path)
    assert list(df.columns) == results.COLUMNS
    loaded = results.load([tmp_path])
    assert loaded.loc[loaded.metric == "latency_ms", "samples"].iloc[0].tolist() == [1.4, 1.5, 1.6]


def test_rows_must_match_schema() -> None:
    with pytest.raises(results.SchemaError, match="extra=\\['bogus'\\]"):
        results.to_table([{**row(), "bogus": 1}])


def test_unknown_major_version_is_refused(tmp_path: Path) -> None:
    table = results.to_table([row()])
    table = table.replace_schema_metadata({b"attnbench.schema_version": b"9.0"})
    pq.write_table(table, tmp_path / "future.parquet")
    with pytest.raises(results.SchemaError, match="schema 9.0 is not readable"):
        results.load([tmp_path])


def test_older_minor_version_reads_added_columns_as_null(tmp_path: Path) -> None:
    old = results.to_table([row(options='{"pos": "rope"}')]).drop_columns(list(results.ADDED_IN_MINOR))
    pq.write_table(old.replace_schema_metadata({b"attnbench.schema_version": b"1.0"}), tmp_path / "v10.parquet")
    results.write_part(tmp_path, [row(case_id="c2", options='{"pos": "rope"}')], run_id="r1")
    df = results.load([tmp_path]).set_index("case_id")
    assert sorted(df.reset_index().columns) == sorted(results.COLUMNS)
    assert pd.isna(df.loc["c1", "options"]) and df.loc["c2", "options"] == '{"pos": "rope"}'
    bad = results.to_table([row()]).drop_columns(["metric"])
    pq.write_table(bad, tmp_path / "broken.parquet")
    with pytest.raises(results.SchemaError, match="missing columns \\['metric'\\]"):
        results.load([tmp_path / "broken.parquet"])


def test_foreign_parquet_is_refused(tmp_path: Path) -> None:
    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(results.SchemaError, match="no attnbench schema version"):
        results.load([tmp_path])


def test_latest_run_wins_per_case(tmp_path: Path) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    results.write_part(tmp_path, [row(run_id="old", created_at=t0, status="error", value=None)], run_id="old")
    results.write_part(tmp_path, [row(run_id="new", created_at=t0 + timedelta(1))], run_id="new")
    df = results.load([tmp_path])
    assert df["run_id"].tolist() == ["new"]
    assert len(results.load([tmp_path], latest_only=False)) == 2
    assert results.done_case_ids(tmp_path) == {"c1"}


def test_failed_case_is_not_done(tmp_path: Path) -> None:
    results.write_part(tmp_path, [row(status="oom", value=None)], run_id="r1")
    assert results.done_case_ids(tmp_path) == set()


def test_no_temp_files_left_and_compact(tmp_path: Path) -> None:
    for i in range(3):
        results.write_part(tmp_path, [row(case_id=f"c{i}")], run_id="r1")
    assert not list(tmp_path.glob(".*"))
    merged = results.compact(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [merged.name]
    assert sorted(results.load([tmp_path])["case_id"]) == ["c0", "c1", "c2"]


def test_missing_path_is_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no results at"):
        results.load([tmp_path / "nope"])


def test_rows_per_metric_and_devices_survive_merging(tmp_path: Path) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    per_n = [row(seq_len=n, seq_kv=n) for n in (128, 256)]  # scaling: one latency row per N
    results.write_part(tmp_path, per_n, run_id="r1")
    results.write_part(tmp_path, [row(run_id="r2", created_at=t0 + timedelta(1), device_name="H100")],
                       run_id="r2")
    df = results.load([tmp_path])
    assert len(df[df.device_name == "cpu"]) == 2 and len(df[df.device_name == "H100"]) == 1
    assert len(results.load([tmp_path, tmp_path])) == 3  # the same files twice add nothing
