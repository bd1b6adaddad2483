"""CI regression gate: compare HEAD results with BASE, noise-aware.

Rows are matched by case and metric. A metric regresses when it is worse by more than `threshold`
(a factor, in the metric's own direction) AND the difference is significant: a one-sided
bootstrap on the ratio of medians, resampling runs (replicates) and then each run's samples.
Timings without samples or spread are never called significant; deterministic metrics (memory
bytes, accuracy) without samples are. A case that goes from ok to failed is a regression; cases
that vanish or appear are reported. When BASE and HEAD come from different machines or
libraries, timings are compared as ratios to the `baseline` method/backend of the same run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from attnbench.benchjson import BenchJsonError, load_inputs
from attnbench.results import ROW_IDENTITY, SchemaError

LOWER, HIGHER = "lower", "higher"
# Measured timings (and rates derived from them): only significant given samples, spread or replicates.
TIMED = {"latency_ms", "setup_ms", "tflops", "pct_peak", "speedup_vs_dense", "realisation"}
_DIRECTION = {
    "latency_ms": LOWER,
    "setup_ms": LOWER,
    "peak_mem_bytes": LOWER,
    "mse": LOWER,
    "accuracy": HIGHER,
    "top1": HIGHER,
    "top5": HIGHER,
    "tflops": HIGHER,
    "pct_peak": HIGHER,
    "speedup_vs_dense": HIGHER,
    "realisation": HIGHER,
    "chair_i": LOWER,
    "chair_s": LOWER,
}
# Analytic, diagnostic or training-bookkeeping metrics: shown by the site, not gated (numerics are
# gated by the status `wrong`; training outcomes by their accuracy/error metrics).
INFO = {
    "status",
    "flops_useful",
    "flops_executed",
    "flops_counted",
    "flops_counted_ratio",
    "attn_matrix_bytes",
    "kv_cache_bytes",
    "speedup_bound",
    "cost_exponent",
    "max_abs_err",
    "max_rel_err",
    "grad_max_abs_err",
    "train_loss",
    "steps",
    "steps_to_target",
    "truncated",
    "wall_s",
    "params",
}
_HIGHER_WORDS = re.compile(r"(^|_)(acc|accuracy|top1|top5|f1|precision|recall|tflops)($|_)")
# Differences below these are never regressions (page-granular RSS, one accuracy point).
FLOOR_BYTES, FLOOR_FRACTION = float(1 << 20), 0.01
FAILED = {"wrong", "oom", "error", "timeout", "unsupported"}
# Columns that identify a row within its case across runs: the results' row identity, minus the run.
_KEY = ["suite", *(c for c in ROW_IDENTITY if c != "run_id")]
_ENV = ["device_name", "torch_version", "triton_version", "num_threads"]
_BOOT = 2000


class GateInputError(ValueError):
    """Input the gate cannot compare (missing, unreadable, empty or mixed); the CLI exits 2."""


def direction(metric: str, unit: str = "") -> str | None:
    """`lower`/`higher` is better, or None for metrics that are not gated (the site uses it too)."""
    if metric in _DIRECTION:
        return _DIRECTION[metric]
    if metric.startswith("icl_mse/"):  # model error over a baseline's
        return LOWER
    if metric in INFO or "err" in metric or metric.startswith(("flops", "delta_")) or unit == "ratio":
        return None
    if unit in ("ms", "s", "us", "bytes") or metric.endswith(("_ms", "_bytes")):
        return LOWER
    if "mse" in metric or "loss" in metric or unit == "mse":
        return LOWER
    if _HIGHER_WORDS.search(metric):
        return HIGHER
    return None


def is_timed(metric: str, unit: str = "") -> bool:
    return metric in TIMED or unit in ("ms", "s", "us", "TFLOP/s") or metric.endswith(("_ms", "_s"))


@dataclass(frozen=True)
class Entry:
    """One compared (case, metric); `factor` > 1 means HEAD is worse by that factor."""

    verdict: str  # regression|failed|improvement|fixed|unchanged|noisy|untested|still_failing|vanished|new
    suite: str
    method: str
    backend: str
    workload: str
    metric: str
    base: float | None = None
    head: float | None = None
    factor: float | None = None
    p_value: float | None = None
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.suite}: {self.method}/{self.backend} {self.workload}"


_ORDER = [
    "regression",
    "failed",
    "vanished",
    "noisy",
    "improvement",
    "fixed",
    "new",
    "still_failing",
    "untested",
    "unchanged",
]
_SHOWN = ["regression", "failed", "vanished", "noisy", "improvement", "fixed", "new", "still_failing"]


@dataclass
class Comparison:
    """Result of a comparison; `exit_code` is 1 when anything regressed or failed."""

    entries: list[Entry]
    warnings: list[str] = field(default_factory=list)
    threshold: float = 1.10
    alpha: float = 0.05
    normalised: bool = False
    baseline: str = "mha/sdpa"
    base_label: str = "base"
    head_label: str = "head"

    @property
    def exit_code(self) -> int:
        return 1 if any(e.verdict in ("regression", "failed") for e in self.entries) else 0

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(_ORDER, 0)
        for e in self.entries:
            out[e.verdict] = out.get(e.verdict, 0) + 1
        return {k: v for k, v in out.items() if v}

    def shown(self) -> list[Entry]:
        rank = {v: i for i, v in enumerate(_ORDER)}
        return sorted(
            (e for e in self.entries if e.verdict in _SHOWN),
            key=lambda e: (rank[e.verdict], -(e.factor or 0), e.label, e.metric),
        )

    def headline(self) -> str:
        status = "REGRESSION" if self.exit_code else "OK"
        counts = ", ".join(f"{v} {k}" for k, v in self.counts().items())
        mode = f"ratios to {self.baseline} (machine mismatch)" if self.normalised else "direct"
        return (
            f"{status}: {self.head_label} vs {self.base_label} — {counts or 'nothing compared'} "
            f"(threshold ×{self.threshold:g}, alpha {self.alpha:g}, {mode})"
        )

    def render(self, console: Console) -> None:
        for w in self.warnings:
            console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
        rows = self.shown()
        if rows:
            table = Table(title=f"attnbench compare: {self.head_label} vs {self.base_label}")
            for col in ("verdict", "case", "metric", "base", "head", "worse ×", "p", "note"):
                table.add_column(col, overflow="fold")
            style = {
                "regression": "red",
                "failed": "red",
                "improvement": "green",
                "fixed": "green",
                "noisy": "yellow",
                "vanished": "yellow",
            }
            for e in rows:
                table.add_row(
                    f"[{style.get(e.verdict, 'white')}]{e.verdict}[/]",
                    e.label,
                    e.metric,
                    _fmt(e.base),
                    _fmt(e.head),
                    _fmt(e.factor),
                    _fmt(e.p_value),
                    e.note,
                )
            console.print(table)
        console.print(("[red]" if self.exit_code else "[green]") + self.headline() + "[/]", highlight=False)

    def to_markdown(self) -> str:
        icon = "❌" if self.exit_code else "✅"
        lines = [f"### {icon} attnbench compare", "", md_escape(self.headline()), ""]
        lines += [f"> ⚠️ {md_escape(w)}" for w in self.warnings]
        rows = self.shown()
        if rows:
            lines += [
                "",
                "| verdict | case | metric | base | head | worse × | p | note |",
                "|---|---|---|---:|---:|---:|---:|---|",
            ]
            lines += [
                f"| {e.verdict} | {md_escape(e.label)} | {md_escape(e.metric)} | {_fmt(e.base)} | {_fmt(e.head)} | "
                f"{_fmt(e.factor)} | {_fmt(e.p_value)} | {md_escape(e.note)} |"
                for e in rows
            ]
        return "\n".join(lines) + "\n"

    def to_json(self) -> str:
        return json.dumps(
            {
                "exit_code": self.exit_code,
                "headline": self.headline(),
                "counts": self.counts(),
                "threshold": self.threshold,
                "alpha": self.alpha,
                "normalised": self.normalised,
                "baseline": self.baseline,
                "base": self.base_label,
                "head": self.head_label,
                "warnings": self.warnings,
                "entries": [asdict(e) for e in self.entries],
            },
            indent=2,
            default=_json_default,
        )


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    return str(x)


def md_escape(s: str) -> str:
    """Text safe inside a Markdown table cell (HTML and table/emphasis syntax escaped)."""
    return (
        s.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("|", "\\|")
        .replace("`", "\\`")
        .replace("*", "\\*")
        .replace("_", "\\_")
        .replace("\n", " ")
    )


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "—"
    return f"{x:.4g}"



# -- loading -------------------------------------------------------------------------------------
def _load(paths: Sequence[str | os.PathLike[str]], side: str) -> pd.DataFrame:
    if not paths:
        raise GateInputError(f"no {side} results given")
    try:
        df = load_inputs(paths, latest_only=False)
    except (SchemaError, BenchJsonError, FileNotFoundError) as exc:
        raise GateInputError(f"{side}: {exc}") from None
    if df.empty:
        raise GateInputError(f"{side}: no result rows under {', '.join(map(str, paths))}")
    # Replicates: every run of a case made from the same code as that case's latest run.
    by = [df["case_id"], df["device_name"].fillna("")]
    last = df.groupby(by)["created_at"].transform("max")
    latest_sha = df["git_sha"].where(df["created_at"] == last).groupby(by).transform("first")
    df = df[(df["git_sha"].fillna("") == latest_sha.fillna(""))].copy()
    df["key"] = _keys(df)
    return df


def _keys(df: pd.DataFrame) -> pd.Series:
    cols = [df[c].astype(object).where(df[c].notna(), None).map(str) for c in _KEY]
    return pd.Series(["|".join(t) for t in zip(*cols, strict=True)], index=df.index, dtype=object)


def _env_mismatch(base: pd.DataFrame, head: pd.DataFrame) -> list[str]:
    out = []
    for col in _ENV:
        b = sorted(set(base[col].dropna().astype(str)))
        h = sorted(set(head[col].dropna().astype(str)))
        if b != h:
            out.append(f"{col}: base {', '.join(b) or '?'} vs head {', '.join(h) or '?'}")
    return out


# -- statistics ----------------------------------------------------------------------------------
@dataclass
class _Side:
    values: list[float]  # one reported value (median) per run
    samples: list[np.ndarray]  # per run: raw samples, or the value alone
    spread: list[tuple[float, float] | None]  # per run (p20, p80)

    @property
    def center(self) -> float:
        return float(np.median(self.values))

    @property
    def has_samples(self) -> bool:
        return any(len(s) >= 3 for s in self.samples)


def _side(rows: pd.DataFrame, scale: pd.Series | None = None) -> _Side | None:
    ok = rows[(rows["status"] == "ok") & rows["value"].notna()].sort_values("created_at", kind="stable")
    if ok.empty:
        return None
    values, samples, spread = [], [], []
    for idx, r in ok.iterrows():
        s = 1.0 if scale is None else float(scale.loc[idx])
        v = float(r["value"]) / s
        raw = r["samples"]
        arr = np.asarray(raw, dtype=float) / s if raw is not None and len(raw) else np.asarray([v])
        values.append(v)
        samples.append(arr[np.isfinite(arr)] if np.isfinite(arr).any() else np.asarray([v]))
        has = pd.notna(r["p20"]) and pd.notna(r["p80"])
        spread.append((float(r["p20"]) / s, float(r["p80"]) / s) if has else None)
    return _Side(values, samples, spread)


def _boot_centers(side: _Side, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap distribution of the side's center: resample runs, then each run's samples."""
    meds = np.empty((len(side.samples), _BOOT))
    for i, s in enumerate(side.samples):
        meds[i] = np.median(s[rng.integers(0, len(s), (_BOOT, len(s)))], axis=1) if len(s) > 1 else s[0]
    if len(side.samples) == 1:
        return meds[0]
    pick = rng.integers(0, len(side.samples), (_BOOT, len(side.samples)))
    return np.median(meds[pick, np.arange(_BOOT)[:, None]], axis=1)


def paired(base: _Side, head: _Side) -> bool:
    """Replicated on both sides the same number of times (A/B rounds): the i-th runs form a pair."""
    n = len(base.values)
    return n >= 2 and n == len(head.values) and min(base.values + head.values) > 0


def _boot_rounds(side: _Side, rng: np.random.Generator) -> np.ndarray:
    """`[runs, B]` bootstrap medians of each run's samples."""
    out = np.empty((len(side.samples), _BOOT))
    for i, s in enumerate(side.samples):
        out[i] = np.median(s[rng.integers(0, len(s), (_BOOT, len(s)))], axis=1) if len(s) > 1 else s[0]
    return out


def paired_factor(base: _Side, head: _Side) -> float:
    """Geometric mean over rounds of head/base (the higher-is-worse ratio)."""
    return float(np.exp(np.mean(np.log(np.asarray(head.values) / np.asarray(base.values)))))


def significance(base: _Side, head: _Side, worse_is_higher: bool, timed: bool) -> tuple[float | None, str]:
    """One-sided p-value that HEAD is worse than BASE, and how it was obtained (None: untestable).

    Paired rounds: resample rounds (keeping pairs), then samples within each run, and test the
    mean log ratio; so a difference must hold across rounds, while drift between rounds cancels.
    """
    rng = np.random.default_rng(0)
    if timed and not (base.has_samples and head.has_samples):
        # setup time, TFLOP/s, speedups: one number per run, derived from or as noisy as latency;
        # runs alone do not sample the noise within a run, so only latency-like samples are gated
        return None, "timing without samples"
    if paired(base, head):
        d = np.log(_boot_rounds(head, rng) / _boot_rounds(base, rng))  # [rounds, B]
        pick = rng.integers(0, d.shape[0], (_BOOT, d.shape[0]))
        mean = d[pick, np.arange(_BOOT)[:, None]].mean(axis=1)
        better_or_same = mean <= 0 if worse_is_higher else mean >= 0
        return float(np.mean(better_or_same)), f"paired bootstrap, {d.shape[0]} rounds"
    replicated = len(base.values) > 1 and len(head.values) > 1
    if base.has_samples or head.has_samples or not timed:
        b, h = _boot_centers(base, rng), _boot_centers(head, rng)
        better_or_same = (h <= b) if worse_is_higher else (h >= b)
        test = "bootstrap" if (base.has_samples or head.has_samples or replicated) else "exact"
        return float(np.mean(better_or_same)), test
    bs, hs = base.spread[0], head.spread[0]
    if bs is None or hs is None:
        return None, "no samples or spread"
    disjoint = hs[0] > bs[1] if worse_is_higher else hs[1] < bs[0]
    return (0.0 if disjoint else 1.0), "p20–p80 overlap"


# -- comparison ----------------------------------------------------------------------------------
def _baseline_scale(df: pd.DataFrame, baseline: str) -> pd.Series:
    """For each row, the same run's `baseline` value of the same suite/workload/metric (NaN if none)."""
    method, _, backend = baseline.partition("/")
    cols = ["run_id", "suite", "workload_id", "metric", "stat", "seq_len"]
    ref = df[(df["method"] == method) & (df["backend"] == backend) & (df["status"] == "ok")]
    ref = ref.groupby(cols, dropna=False)["value"].first().rename("_scale").reset_index()
    merged = df[cols].merge(ref, on=cols, how="left")
    return pd.Series(merged["_scale"].to_numpy(), index=df.index)


def _case_status(rows: pd.DataFrame) -> tuple[str, str]:
    bad = rows[rows["status"] != "ok"]
    if bad.empty:
        return "ok", ""
    failed = bad[bad["status"].isin(FAILED)]
    pick = failed.iloc[-1] if len(failed) else bad.iloc[-1]
    return str(pick["status"]), str(pick["error"] or "")


def _compare_frames(
    base: pd.DataFrame, head: pd.DataFrame, *, threshold: float, alpha: float, baseline: str
) -> Comparison:
    warnings: list[str] = []
    mismatch = _env_mismatch(base, head)
    normalised = bool(mismatch)
    if normalised:
        warnings.append(
            "machine/library mismatch (" + "; ".join(mismatch) + f"): timings are compared as "
            f"ratios to {baseline} measured in the same run"
        )
        if not ((base["method"] + "/" + base["backend"]) == baseline).any():
            warnings.append(f"baseline {baseline} is absent from base: timings cannot be compared")
    elif base["device_name"].nunique() > 1:
        base = base.assign(key=base["key"] + "|" + base["device_name"].astype(str))
        head = head.assign(key=head["key"] + "|" + head["device_name"].astype(str))
    bscale = _baseline_scale(base, baseline) if normalised else None
    hscale = _baseline_scale(head, baseline) if normalised else None

    entries: list[Entry] = []
    b_cases, h_cases = set(base["case_id"]), set(head["case_id"])
    for side, cases, df, verdict in (
        ("base", b_cases - h_cases, base, "vanished"),
        ("head", h_cases - b_cases, head, "new"),
    ):
        for cid in sorted(cases):
            r = df[df["case_id"] == cid].iloc[0]
            entries.append(
                Entry(
                    verdict,
                    r["suite"],
                    r["method"],
                    r["backend"],
                    str(r["workload_id"]),
                    "*",
                    note=f"case {cid} only in {side}",
                )
            )
    common = b_cases & h_cases
    bg = {k: g for k, g in base[base["case_id"].isin(common)].groupby("case_id")}
    hg = {k: g for k, g in head[head["case_id"].isin(common)].groupby("case_id")}
    for cid in sorted(common):
        brows, hrows = bg[cid], hg[cid]
        first = hrows.iloc[0]
        ident = (first["suite"], first["method"], first["backend"], str(first["workload_id"]))
        bstat, _ = _case_status(brows)
        hstat, herr = _case_status(hrows)
        if hstat != "ok" or bstat != "ok":
            if bstat == "ok" and hstat in FAILED:
                entries.append(Entry("failed", *ident, "status", note=f"ok → {hstat}: {herr}"[:300]))
                continue
            if bstat in FAILED and hstat == "ok":
                entries.append(Entry("fixed", *ident, "status", note=f"{bstat} → ok"))
                continue
            if bstat != "ok" and hstat != "ok":
                entries.append(Entry("still_failing", *ident, "status", note=f"{bstat} → {hstat}"))
                continue
            elif hstat not in FAILED and hstat != "ok":
                warnings.append(f"{ident[0]}: {ident[1]}/{ident[2]} {ident[3]} was ok, now {hstat}")
                continue
        bkeys = {k: g for k, g in brows.groupby("key")}
        for key, hk in hrows.groupby("key"):
            metric, unit = str(hk["metric"].iloc[0]), str(hk["unit"].iloc[0] or "")
            d = direction(metric, unit)
            if d is None or key not in bkeys:
                continue
            entries.append(
                _compare_metric(bkeys[key], hk, ident, metric, unit, d, threshold, alpha, bscale, hscale, baseline)
            )
    return Comparison(entries, warnings, threshold, alpha, normalised, baseline)


def _compare_metric(
    brows: pd.DataFrame,
    hrows: pd.DataFrame,
    ident: tuple[str, str, str, str],
    metric: str,
    unit: str,
    d: str,
    threshold: float,
    alpha: float,
    bscale: pd.Series | None,
    hscale: pd.Series | None,
    baseline: str,
) -> Entry:
    timed = is_timed(metric, unit)
    relative = timed and bscale is not None and metric not in ("speedup_vs_dense", "realisation")
    note = ""
    if relative:
        if f"{ident[1]}/{ident[2]}" == baseline:
            return Entry("untested", *ident, metric, note="the baseline itself (ratios are 1)")
        bs, hs = bscale.loc[brows.index], hscale.loc[hrows.index]  # type: ignore[union-attr]
        if bs.isna().all() or hs.isna().all():
            return Entry("untested", *ident, metric, note=f"no same-run {baseline} to normalise by")
        brows, hrows, bs, hs = brows[bs.notna()], hrows[hs.notna()], bs.dropna(), hs.dropna()
        note = f"ratio to {baseline}"
    b = _side(brows, bs if relative else None)
    h = _side(hrows, hs if relative else None)
    if b is None or h is None:
        return Entry("untested", *ident, metric, note="no ok value on one side")
    bc, hc = b.center, h.center
    if paired(b, h):
        ratio = paired_factor(b, h)
        factor = ratio if d == LOWER else 1 / ratio
    elif bc <= 0 or hc <= 0:
        factor = 1.0 if bc == hc else float("inf")
    else:
        factor = hc / bc if d == LOWER else bc / hc
    if d == HIGHER and bc > 0 and hc <= 0:
        factor = float("inf")
    floor = (
        FLOOR_BYTES
        if metric.endswith("_bytes") or unit == "bytes"
        else FLOOR_FRACTION
        if unit == "fraction" or d == HIGHER and _HIGHER_WORDS.search(metric) and "tflops" not in metric
        else 0.0
    )
    big = factor > threshold and abs(hc - bc) >= floor
    better = factor < 1 / threshold and abs(hc - bc) >= floor
    p, how = significance(b, h, worse_is_higher=(d == LOWER), timed=timed)
    note = "; ".join(x for x in (note, how) if x)
    if p is None:
        return Entry("untested", *ident, metric, bc, hc, factor, None, note)
    if big:
        verdict = "regression" if p < alpha else "noisy"
    elif better:
        verdict = "improvement" if 1 - p < alpha else "unchanged"
    else:
        verdict = "unchanged"
    return Entry(verdict, *ident, metric, bc, hc, factor, p, note)


def compare(
    base: Sequence[str | os.PathLike[str]],
    head: Sequence[str | os.PathLike[str]],
    *,
    threshold: float = 1.10,
    alpha: float = 0.05,
    baseline: str = "mha/sdpa",
) -> Comparison:
    """Compare HEAD results with BASE results (folders, Parquet or pytest-benchmark JSON files).

    Every run of a case (from the same git sha as its latest run) counts as a replicate.

    Raises:
        GateInputError: a side is missing, unreadable, empty, or the options are invalid.
    """
    if threshold < 1:
        raise GateInputError(f"threshold is a factor ≥ 1, got {threshold}")
    if not 0 < alpha < 1:
        raise GateInputError(f"alpha must be in (0, 1), got {alpha}")
    b, h = _load(base, "base"), _load(head, "head")
    cmp = _compare_frames(b, h, threshold=threshold, alpha=alpha, baseline=baseline)
    cmp.base_label, cmp.head_label = _label(b, base), _label(h, head)
    return cmp


def _label(df: pd.DataFrame, paths: Sequence[str | os.PathLike[str]]) -> str:
    shas = sorted(set(df["git_sha"].dropna().astype(str)) - {""})
    where = ", ".join(str(p) for p in paths)
    return f"{where} ({', '.join(shas)})" if shas else where


# -- A/B on one machine --------------------------------------------------------------------------
def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if out.returncode:
        raise GateInputError(f"git {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout.strip()


def _shim(src: Path, dest: Path) -> Path:
    """A folder to put on PYTHONPATH that imports `attnbench` (and its mapped subpackages) from `src`."""
    mapping = {"attnbench": "attnbench"}
    pyproject = src / "pyproject.toml"
    if pyproject.exists():
        tool = tomllib.loads(pyproject.read_text()).get("tool", {}).get("setuptools", {})
        mapping.update(tool.get("package-dir", {}))
    pkg = dest / "attnbench"
    pkg.mkdir(parents=True)
    for item in (src / mapping["attnbench"]).iterdir():
        if item.name != "__pycache__":
            (pkg / item.name).symlink_to(item.resolve())
    for name, rel in mapping.items():
        if name.startswith("attnbench.") and name.count(".") == 1:
            link = pkg / name.split(".", 1)[1]
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to((src / rel).resolve())
    return dest


def _side_env(shim: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(shim)
    env.pop("PYTHONSTARTUP", None)
    return env


_RUN = "import sys; sys.argv[0] = 'attnbench'; from attnbench.cli import app; app()"


def _check_shim(shim: Path, src: Path) -> None:
    probe = "import attnbench, attnbench.impls, os; print(os.path.realpath(attnbench.impls.__path__[0]))"
    out = subprocess.run([sys.executable, "-P", "-c", probe], env=_side_env(shim), capture_output=True, text=True)
    got = out.stdout.strip()
    if out.returncode or not got.startswith(str(src.resolve())):
        raise GateInputError(f"cannot import attnbench from {src} (got {got or out.stderr.strip()[-300:]})")


def ab_compare(
    ref: str,
    *,
    run_args: list[str],
    repo: str | os.PathLike[str] = ".",
    rounds: int = 3,
    threshold: float = 1.10,
    alpha: float = 0.05,
    baseline: str = "mha/sdpa",
    console: Console | None = None,
    keep: str | os.PathLike[str] | None = None,
) -> Comparison:
    """Run `attnbench run <run_args>` on commit `ref` and on the working tree, interleaved, then compare.

    The base commit is checked out as a git worktree and imported through PYTHONPATH, so its own
    code is measured; each round runs both sides (alternating which goes first), and the i-th
    rounds of both sides form a pair for the significance test. `keep`: a folder to copy the
    results into (`base/round<i>`, `head/round<i>`), e.g. for a CI artifact.

    Raises:
        GateInputError: `ref` is unknown, or a side's run fails.
    """
    if rounds < 1:
        raise GateInputError(f"rounds must be ≥ 1, got {rounds}")
    log = console or Console(stderr=True)
    repo = Path(_git(Path(repo), "rev-parse", "--show-toplevel"))
    sha = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    short = sha[:12]
    with tempfile.TemporaryDirectory(prefix="attnbench-ab-") as tmpdir:
        tmp = Path(tmpdir)
        worktree = tmp / "base-src"
        _git(repo, "worktree", "add", "--detach", str(worktree), sha)
        try:
            sides = {"base": _shim(worktree, tmp / "base-shim"), "head": _shim(repo, tmp / "head-shim")}
            _check_shim(sides["base"], worktree)
            _check_shim(sides["head"], repo)
            outs: dict[str, list[Path]] = {"base": [], "head": []}
            for r in range(rounds):
                for name in ("base", "head") if r % 2 == 0 else ("head", "base"):
                    out = tmp / name / f"round{r}"
                    log.print(
                        f"[bold]ab round {r + 1}/{rounds}[/bold]: {name} "
                        f"({short if name == 'base' else 'working tree'})",
                        highlight=False,
                    )
                    _run_side(sides[name], run_args, out)
                    outs[name].append(out)
            cmp = compare(outs["base"], outs["head"], threshold=threshold, alpha=alpha, baseline=baseline)
            if keep is not None:
                for name in ("base", "head"):
                    shutil.copytree(tmp / name, Path(keep) / name, dirs_exist_ok=True)
        finally:
            subprocess.run(
                ["git", "-C", str(repo), "worktree", "remove", "--force", str(worktree)], capture_output=True
            )
            subprocess.run(["git", "-C", str(repo), "worktree", "prune"], capture_output=True)
    cmp.base_label, cmp.head_label = f"{ref} ({short})", "working tree"
    cmp.warnings.insert(0, f"A/B: {rounds} interleaved rounds of `attnbench run {shlex.join(run_args)}`")
    return cmp


def _run_side(shim: Path, run_args: list[str], out: Path) -> None:
    args = list(run_args)
    if not any(re.fullmatch(r"--(no-)?report", a) for a in args):
        args.append("--no-report")
    # -P: the current directory (often the repo itself) must not shadow the shim on sys.path
    cmd = [sys.executable, "-P", "-c", _RUN, "run", *args, "-o", str(out)]
    proc = subprocess.run(cmd, env=_side_env(shim), capture_output=True, text=True)
    if proc.returncode:
        tail = (proc.stderr or proc.stdout).strip()[-1500:]
        raise GateInputError(f"`attnbench run {shlex.join(args)}` failed (exit {proc.returncode}):\n{tail}")
