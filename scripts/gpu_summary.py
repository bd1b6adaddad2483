"""Markdown summary of a GPU check: per method the best backend, its TFLOP/s, % of peak, speedup vs
FlashAttention-2 dense at the same shape, and every backend that failed with its reason.

    python scripts/gpu_summary.py RESULTS... [-o summary.md]

The dense reference is the first of `mha/flash_attn`, `mha/sdpa_flash`, `mha/sdpa_cudnn`, `mha/sdpa`
measured at the same (N, dtype, causal, mode, batch, heads, head size); the summary names which
(without any, the latency suite's own `speedup_vs_dense` against mha/sdpa timed interleaved).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

DENSE_REFERENCES = ("flash_attn", "sdpa_flash", "sdpa_cudnn", "sdpa")  # FA2 first: what GPU users compare to
SHAPE = ["seq_len", "dtype", "causal", "mode", "batch", "heads", "head_dim"]
FAILED = ("error", "wrong", "timeout", "oom", "unsupported")


def _latency(df: pd.DataFrame) -> pd.DataFrame:
    """One row per ok latency case: median ms plus that case's tflops / pct_peak / realisation."""
    lat = df[(df["suite"] == "latency") & (df["status"] == "ok")]
    wide = lat.pivot_table(index=["case_id", "method", "backend", *SHAPE], columns="metric", values="value",
                           aggfunc="first").reset_index()
    for col in ("latency_ms", "tflops", "pct_peak", "realisation", "setup_ms", "speedup_vs_dense"):
        if col not in wide:
            wide[col] = float("nan")
    return wide[wide["latency_ms"].notna()]


def _dense(wide: pd.DataFrame) -> dict[tuple, tuple[str, float]]:
    """Shape → (backend, latency) of the preferred dense mha reference measured at that shape."""
    out: dict[tuple, tuple[str, float]] = {}
    mha = wide[wide["method"] == "mha"]
    for backend in reversed(DENSE_REFERENCES):  # later (preferred) entries overwrite earlier ones
        for _, r in mha[mha["backend"] == backend].iterrows():
            out[tuple(r[c] for c in SHAPE)] = (backend, float(r["latency_ms"]))
    return out


def _fmt(x: float, digits: int = 2) -> str:
    return "–" if pd.isna(x) else f"{x:.{digits}f}"


def best_table(wide: pd.DataFrame) -> list[str]:
    dense = _dense(wide)
    lines = ["| method | N | mode | best backend | latency ms | TFLOP/s | % of peak | vs dense (ref) | "
             "realisation | backends timed |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (method, n, mode), g in wide.groupby(["method", "seq_len", "mode"], sort=True):
        best = g.loc[g["latency_ms"].idxmin()]
        ref = dense.get(tuple(best[c] for c in SHAPE))
        if ref:
            vs = f"{ref[1] / best['latency_ms']:.2f}× ({ref[0]})"
        else:  # no mha row at this shape: the latency suite's own ratio to mha/sdpa, timed interleaved
            vs = "–" if pd.isna(best["speedup_vs_dense"]) else f"{best['speedup_vs_dense']:.2f}× (sdpa, interleaved)"
        lines.append(f"| {method} | {n} | {mode} | {best['backend']} | {_fmt(best['latency_ms'], 3)} | "
                     f"{_fmt(best['tflops'])} | {_fmt(best['pct_peak'], 1)} | {vs} | "
                     f"{_fmt(best['realisation'])} | {', '.join(sorted(g['backend'].unique()))} |")
    return lines


def backend_table(wide: pd.DataFrame) -> list[str]:
    lines = ["| backend | cases | median TFLOP/s | best % of peak |", "|---|---|---|---|"]
    for backend, g in wide.groupby("backend", sort=True):
        lines.append(f"| {backend} | {len(g)} | {_fmt(g['tflops'].median())} | {_fmt(g['pct_peak'].max(), 1)} |")
    return lines


def failure_table(df: pd.DataFrame) -> list[str]:
    bad = df[df["status"].isin(FAILED)].copy()
    if bad.empty:
        return ["No backend failed or was unsupported."]
    bad["reason"] = bad["error"].fillna("").astype(str).str.split("\n").str[0].str.slice(0, 160)
    rows = bad.groupby(["method", "backend", "status"], sort=True).agg(
        cases=("case_id", "nunique"), reason=("reason", "first")).reset_index()
    lines = ["| method | backend | status | cases | reason |", "|---|---|---|---|---|"]
    for _, r in rows.iterrows():
        reason = r["reason"].replace("|", "\\|")
        lines.append(f"| {r['method']} | {r['backend']} | {r['status']} | {r['cases']} | {reason} |")
    return lines


def summarize(df: pd.DataFrame) -> str:
    """The whole Markdown document for one results frame (`attnbench.results.load`)."""
    device = ", ".join(sorted(df["device_name"].dropna().unique())) or "unknown device"
    wide = _latency(df)
    parts = [f"# GPU check: {device}", "",
             f"{df['case_id'].nunique()} cases, {len(wide)} timed; dense reference per shape: the first of "
             f"{', '.join('mha/' + b for b in DENSE_REFERENCES)} that ran.", "",
             "## Best backend per method", "", *best_table(wide), "",
             "## Per backend", "", *backend_table(wide), "",
             "## Failed or unsupported", "", *failure_table(df), ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="+", type=Path)
    ap.add_argument("-o", "--output", type=Path)
    args = ap.parse_args(argv)
    from attnbench.results import load

    text = summarize(load(args.results))
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
