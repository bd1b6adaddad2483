"""Downloads: every table of the site as CSV and Parquet, and the merged raw results as Parquet.

Written at build time from the same `Table` model the pages render, next to the HTML
(`tables/<page>--<table id>.csv|.parquet`, `results.parquet`), so a reader gets exactly the numbers
shown. Each column keeps its displayed text; a column with numbers gets a `<label> (value)` float
column beside it (NaN where the cell is a status or empty). A ranked table's detail rows are
exported too, with a `best` column.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from attnbench import results
from attnbench.reports import data as D


def table_frame(t: D.Table) -> pd.DataFrame:
    """The table as a frame: displayed text per column, plus the numeric value of numeric columns."""
    rows: list[tuple[str, list[D.Cell], bool]] = []
    for fam, cells, kids in t.groups:
        rows.append((fam, cells, True))
        rows += [(f, c, False) for f, c in kids]
    used: set[str] = set()
    data: dict[str, list[object]] = {}

    def name(label: str) -> str:
        n, k = label or "column", 2
        while n in used:
            n, k = f"{label} {k}", k + 1
        used.add(n)
        return n

    for i, (label, _) in enumerate(t.columns):
        texts = [cells[i].text if i < len(cells) else "" for _, cells, _ in rows]
        nums = [_num(cells[i]) if i < len(cells) else math.nan for _, cells, _ in rows]
        data[name(label)] = texts
        if any(not math.isnan(v) for v in nums) and any(
            i < len(cells) and "num" in cells[i].cls.split() for _, cells, _ in rows
        ):
            data[name(f"{label} (value)")] = nums
    if t.children:
        data[name("best")] = [best for _, _, best in rows]
    data[name("family group")] = [fam for fam, _, _ in rows]
    return pd.DataFrame(data)


def _num(c: D.Cell) -> float:
    return float(c.sort) if isinstance(c.sort, float) and "num" in c.cls.split() else math.nan


def write_table(t: D.Table, site: Path, stem: str) -> list[tuple[str, str]]:
    """Write `t` as CSV and Parquet under `site/tables/`; returns (format, href) links relative to the site."""
    folder = site / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    base = D.slug(f"{stem}--{t.id}", set())
    df = table_frame(t)
    df.to_csv(folder / f"{base}.csv", index=False)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), folder / f"{base}.parquet")
    return [("CSV", f"tables/{base}.csv"), ("Parquet", f"tables/{base}.parquet")]


def write_results(raw: pd.DataFrame, site: Path) -> str:
    """The merged raw results (every run read, schema as stored) as `results.parquet`; returns its href."""
    cols = [c for c in results.COLUMNS if c in raw.columns]
    try:
        table = pa.Table.from_pandas(raw[cols], schema=results.SCHEMA, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError, ValueError):  # an odd input column: keep its own types
        table = pa.Table.from_pandas(raw, preserve_index=False)
    pq.write_table(table, site / "results.parquet")
    return "results.parquet"
