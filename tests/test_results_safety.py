"""Nothing lost: compaction through the reader's checks, corrupt parts skipped (and named), writes that
fail early and leave no partial part, and the writability probe run before a run."""

from __future__ import annotations

import errno
import warnings
from collections import namedtuple
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attnbench import results
from attnbench.benchjson import load_inputs

VERSION_KEY = b"attnbench.schema_version"


def row(**kw: Any) -> dict[str, Any]:
    base = dict.fromkeys(results.COLUMNS)
    base.update(
        run_id="r1",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        suite="latency",
        suite_version=1,
        case_id="c1",
        method="mha",
        family="dense",
        backend="sdpa",
        params="{}",
        workload_id="w",
        batch=1,
        heads=4,
        kv_heads=4,
        seq_len=128,
        seq_kv=128,
        head_dim=64,
        dtype="float32",
        causal=False,
        mode="fwd",
        metric="latency_ms",
        value=1.5,
        unit="ms",
        stat="median",
        n=3,
        p20=1.4,
        p80=1.6,
        samples=[1.4, 1.5, 1.6],
        status="ok",
        error="",
        device_kind="cpu",
        device_name="cpu",
        num_threads=2,
        git_sha="abc",
        seed=0,
        preset="smoke",
        options="{}",
    )
    base.update(kw)
    return base


def write_versioned(path: Path, table: pa.Table, version: str) -> Path:
    pq.write_table(table.replace_schema_metadata({VERSION_KEY: version.encode()}), path)
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def corrupt(path: Path) -> Path:
    path.write_bytes(b"PAR1 half a file")
    return path


# -- compaction ---------------------------------------------------------------------------------


def test_compact_keeps_newer_minor_columns_and_version(tmp_path: Path) -> None:
    results.write_part(tmp_path, [row()], run_id="r1")
    newer = results.to_table([row(case_id="c2")]).append_column("future_col", pa.array(["x"]))
    write_versioned(tmp_path / "part-newer.parquet", newer, "1.7")
    merged = results.compact(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [merged.name]
    table = pq.read_table(merged)
    assert table.schema.metadata[VERSION_KEY] == b"1.7"  # the newest minor among the inputs
    assert table.column_names == [*results.COLUMNS, "future_col"]
    by_case = dict(zip(table["case_id"].to_pylist(), table["future_col"].to_pylist(), strict=True))
    assert by_case == {"c1": None, "c2": "x"}
    assert sorted(results.load([tmp_path])["case_id"]) == ["c1", "c2"]  # readers still read it


def test_compact_gives_older_minor_files_their_missing_columns(tmp_path: Path) -> None:
    old = results.to_table([row()]).drop_columns(list(results.ADDED_IN_MINOR))
    write_versioned(tmp_path / "part-old.parquet", old, "1.0")
    results.write_part(tmp_path, [row(case_id="c2", options='{"pos": "rope"}')], run_id="r1")
    merged = results.compact(tmp_path)
    table = pq.read_table(merged)
    assert table.schema.metadata[VERSION_KEY] == results.SCHEMA_VERSION.encode()
    df = results.load([tmp_path]).set_index("case_id")
    assert df["options"].isna()["c1"] and df.loc["c2", "options"] == '{"pos": "rope"}'


@pytest.mark.parametrize(
    ("version", "match"), [("2.0", "schema 2.0 is not readable"), ("", "no attnbench schema version")]
)
def test_compact_refuses_a_foreign_version_and_changes_nothing(tmp_path: Path, version: str, match: str) -> None:
    results.write_part(tmp_path, [row()], run_id="r1")
    table = results.to_table([row(case_id="c2")])
    if version:
        write_versioned(tmp_path / "part-future.parquet", table, version)
    else:
        pq.write_table(table.replace_schema_metadata({}), tmp_path / "part-future.parquet")
    before = snapshot(tmp_path)
    with pytest.raises(results.SchemaError, match=match):
        results.compact(tmp_path)
    assert snapshot(tmp_path) == before


def test_compact_leaves_a_corrupt_part_in_place_and_names_it(tmp_path: Path) -> None:
    for i in range(2):
        results.write_part(tmp_path, [row(case_id=f"c{i}")], run_id="r1")
    corrupt(tmp_path / "part-broken.parquet")
    with results.skipped_files() as skipped:
        merged = results.compact(tmp_path)
    assert len(skipped) == 1 and "part-broken.parquet" in skipped[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["part-broken.parquet", merged.name])
    with pytest.warns(results.SkippedFileWarning, match="part-broken"):
        assert sorted(results.load([tmp_path])["case_id"]) == ["c0", "c1"]


def test_compact_with_only_corrupt_parts_changes_nothing(tmp_path: Path) -> None:
    corrupt(tmp_path / "part-a.parquet")
    before = snapshot(tmp_path)
    with pytest.raises(results.CorruptFileError, match="part-a.parquet"):
        results.compact(tmp_path)
    assert snapshot(tmp_path) == before


def test_compact_removes_parts_only_after_the_merged_file_reads_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(3):
        results.write_part(tmp_path, [row(case_id=f"c{i}")], run_id="r1")
    before = snapshot(tmp_path)
    write = pq.write_table
    monkeypatch.setattr(pq, "write_table", lambda t, where, **kw: write(t.slice(0, t.num_rows - 1), where, **kw))
    with pytest.raises(results.SchemaError, match="wrote 3 rows but read back 2"):
        results.compact(tmp_path)
    assert snapshot(tmp_path) == before  # no merged file, no temp file, every part kept


def test_compact_on_a_full_disk_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results.write_part(tmp_path, [row()], run_id="r1")
    before = snapshot(tmp_path)
    monkeypatch.setattr(pq, "write_table", _disk_full)
    with pytest.raises(results.OutputError, match="disk is full"):
        results.compact(tmp_path)
    assert snapshot(tmp_path) == before


def test_temp_files_of_a_killed_writer_are_ignored(tmp_path: Path) -> None:
    results.write_part(tmp_path, [row()], run_id="r1")
    corrupt(tmp_path / ".part-r1-0123456789ab.parquet.tmp")
    corrupt(tmp_path / ".results-0123456789ab.parquet.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert results.load([tmp_path])["case_id"].tolist() == ["c1"]
        assert load_inputs([tmp_path])["case_id"].tolist() == ["c1"]
        merged = results.compact(tmp_path)
    assert pq.read_table(merged).num_rows == 1


# -- readers ------------------------------------------------------------------------------------


def test_load_skips_a_corrupt_part_with_a_warning(tmp_path: Path) -> None:
    results.write_part(tmp_path, [row()], run_id="r1")
    corrupt(tmp_path / "part-zz.parquet")
    with pytest.warns(results.SkippedFileWarning, match="part-zz.parquet"):
        assert results.load([tmp_path])["case_id"].tolist() == ["c1"]
    with results.skipped_files() as skipped:
        assert load_inputs([tmp_path])["case_id"].tolist() == ["c1"]
    assert len(skipped) == 1 and "part-zz.parquet" in skipped[0]
    with pytest.raises(results.CorruptFileError, match="part-zz"):
        load_inputs([tmp_path], skip_corrupt=False)


def test_nothing_readable_is_an_error(tmp_path: Path) -> None:
    corrupt(tmp_path / "part-a.parquet")
    with pytest.raises(results.CorruptFileError, match="no readable results file.*part-a.parquet"):
        results.load([tmp_path])
    with pytest.warns(results.SkippedFileWarning):
        assert results.done_case_ids(tmp_path) == set()  # --resume reruns everything


def test_no_rows_is_an_error_for_the_report_loader(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(results.NoResultsError, match="no result rows under"):
        load_inputs([tmp_path / "empty"])
    assert issubclass(results.NoResultsError, FileNotFoundError)
    assert load_inputs([tmp_path / "empty"], allow_empty=True).empty
    assert results.load([tmp_path / "empty"]).empty  # the library loader (resume) stays lenient


# -- writing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "column"), [({"seq_len": 2**63}, "seq_len"), ({"n": 2**31}, "n"), ({"heads": "four"}, "heads")]
)
def test_a_value_that_does_not_fit_fails_before_writing(tmp_path: Path, value: dict[str, Any], column: str) -> None:
    with pytest.raises(ValueError, match=f"column '{column}'"):
        results.write_part(tmp_path / "out", [row(), row(case_id="c2", **value)], run_id="r1")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def _disk_full(table: pa.Table, where: Any, **kw: Any) -> None:
    Path(where).write_bytes(b"PAR1 partial")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_leaves_no_partial_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pq, "write_table", _disk_full)
    with pytest.raises(results.OutputError, match="disk is full") as info:
        results.write_part(tmp_path, [row()], run_id="r1")
    assert info.value.__cause__.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_probe_writable_accepts_a_new_folder(tmp_path: Path) -> None:
    results.probe_writable(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir() and list((tmp_path / "a" / "b").iterdir()) == []


def test_probe_writable_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(results.OutputError, match="is a file"):
        results.probe_writable(tmp_path / "f")
    with pytest.raises(results.OutputError, match="a file is in the way"):
        results.probe_writable(tmp_path / "f" / "sub")


@pytest.mark.parametrize(
    ("code", "match"), [(errno.EACCES, "read-only"), (errno.EROFS, "read-only"), (errno.ENOSPC, "disk is full")]
)
def test_probe_writable_explains_a_failed_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, match: str
) -> None:
    def fail(path: Path) -> None:
        raise OSError(code, "refused", str(path))

    monkeypatch.setattr(results, "_write_probe", fail)
    with pytest.raises(results.OutputError, match=match) as info:
        results.probe_writable(tmp_path)
    assert "\n" not in str(info.value)


def test_probe_writable_refuses_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(results.shutil, "disk_usage", lambda p: usage(1 << 30, (1 << 30) - 100, 100))
    with pytest.raises(results.OutputError, match="disk is full"):
        results.probe_writable(tmp_path)


@pytest.mark.skipif(
    not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
    reason="root writes into read-only folders",
)
def test_probe_writable_refuses_a_read_only_folder(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    try:
        with pytest.raises(results.OutputError, match="read-only"):
            results.probe_writable(ro)
    finally:
        ro.chmod(0o700)
