"""Loading one side of a comparison: result rows, their replicates, row keys and environment."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pandas as pd

from attnbench.benchjson import BenchJsonError, load_inputs
from attnbench.results import ROW_IDENTITY, SchemaError

# Columns that identify a row within its case across runs: the results' row identity, minus the run.
KEY = ["suite", *(c for c in ROW_IDENTITY if c != "run_id")]
# Columns whose difference between the sides makes raw timings incomparable.
ENV = ["device_name", "torch_version", "triton_version", "num_threads"]


class GateInputError(ValueError):
    """Input the gate cannot compare (missing, unreadable, empty or mixed); the CLI exits 2."""


def load_side(paths: Sequence[str | os.PathLike[str]], side: str) -> pd.DataFrame:
    """Rows of one side, keeping as replicates every run made from the code of each case's latest run.

    Args:
        paths: result folders, Parquet files or pytest-benchmark JSON files.
        side: "base" or "head", for error messages.

    Returns:
        The rows, with a `key` column identifying each row within its case across runs.

    Raises:
        GateInputError: nothing given, unreadable input (a corrupt file is refused, not skipped:
            skipping it would hide its cases), or no rows.
    """
    if not paths:
        raise GateInputError(f"no {side} results given")
    try:
        df = load_inputs(paths, latest_only=False, skip_corrupt=False, allow_empty=True)
    except (SchemaError, BenchJsonError, FileNotFoundError) as exc:
        raise GateInputError(f"{side}: {exc}") from None
    if df.empty:
        raise GateInputError(f"{side}: no result rows under {', '.join(map(str, paths))}")
    by = [df["case_id"], df["device_name"].fillna("")]
    last = df.groupby(by)["created_at"].transform("max")
    latest_sha = df["git_sha"].where(df["created_at"] == last).groupby(by).transform("first")
    df = df[(df["git_sha"].fillna("") == latest_sha.fillna(""))].copy()
    df["key"] = row_keys(df)
    return df


def row_keys(df: pd.DataFrame) -> pd.Series:
    """One string per row joining its `KEY` columns (None for missing values)."""
    cols = [df[c].astype(object).where(df[c].notna(), None).map(str) for c in KEY]
    return pd.Series(["|".join(t) for t in zip(*cols, strict=True)], index=df.index, dtype=object)


def env_mismatch(base: pd.DataFrame, head: pd.DataFrame) -> list[str]:
    """One line per `ENV` column whose values differ between the sides (empty when they match)."""
    out = []
    for col in ENV:
        b = sorted(set(base[col].dropna().astype(str)))
        h = sorted(set(head[col].dropna().astype(str)))
        if b != h:
            out.append(f"{col}: base {', '.join(b) or '?'} vs head {', '.join(h) or '?'}")
    return out


def side_label(df: pd.DataFrame, paths: Sequence[str | os.PathLike[str]]) -> str:
    """The side's paths, followed by the git shas its rows came from."""
    shas = sorted(set(df["git_sha"].dropna().astype(str)) - {""})
    where = ", ".join(str(p) for p in paths)
    return f"{where} ({', '.join(shas)})" if shas else where
