"""The regression gate on synthetic samples: size AND significance, status changes, vanished cases,
machine mismatch normalised to the same-run baseline, unusable input, and the A/B worktree mode."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from attnbench import gate, results
from attnbench.metrics import HIGHER, LOWER, metric_table

PAIRS = [("mha", "sdpa"), ("mha", "reference"), ("window", "flex")]
SEQ = (128, 256)
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def rows(
    run: str,
    *,
    seed: int,
    slow: dict[str, float] | None = None,
    machine: str = "cpu-A",
    scale: float = 1.0,
    noise: float = 0.02,
    failed: set[str] = frozenset(),
    drop: set[str] = frozenset(),
    accuracy: float = 0.9,
    created: datetime = T0,
) -> list[dict[str, Any]]:
    """One synthetic run: latency (7 samples per case), peak memory and an accuracy proxy."""
    rng = np.random.default_rng(seed)
    out = []
    for method, backend in PAIRS:
        pair = f"{method}/{backend}"
        for n in SEQ:
            cid = f"{pair}-{n}"
            if cid in drop:
                continue
            base = dict.fromkeys(results.COLUMNS)
            base.update(
                run_id=run,
                created_at=created,
                suite="latency",
                case_id=cid,
                method=method,
                backend=backend,
                family="dense",
                params="{}",
                workload_id=f"N{n}",
                batch=1,
                heads=2,
                kv_heads=2,
                seq_len=n,
                seq_kv=n,
                head_dim=32,
                dtype="float32",
                causal=False,
                mode="fwd",
                device_kind="cpu",
                device_name=machine,
                num_threads=2,
                torch_version="2.13.0",
                git_sha=run,
                status="ok",
                error="",
                stat="median",
                suite_version=1,
            )
            if pair in failed:
                for suite, case in (("latency", cid), ("memory", f"mem-{cid}")):
                    out.append(
                        {
                            **base,
                            "suite": suite,
                            "case_id": case,
                            "metric": "status",
                            "status": "error",
                            "error": "RuntimeError: boom",
                            "stat": "value",
                        }
                    )
                continue
            true = 0.001 * n * (3.0 if backend == "reference" else 1.0) * scale * (slow or {}).get(pair, 1.0)
            s = true * np.exp(rng.normal(0, noise, 7))
            out.append(
                {
                    **base,
                    "metric": "latency_ms",
                    "value": float(np.median(s)),
                    "unit": "ms",
                    "n": 7,
                    "p20": float(np.percentile(s, 20)),
                    "p80": float(np.percentile(s, 80)),
                    "samples": [float(x) for x in s],
                }
            )
            out.append({**base, "metric": "speedup_vs_dense", "value": 1.0, "unit": "x"})
            out.append(
                {
                    **base,
                    "suite": "memory",
                    "case_id": f"mem-{cid}",
                    "metric": "peak_mem_bytes",
                    "value": float(n * n * 64),
                    "unit": "bytes",
                    "stat": "max",
                    "n": 1,
                }
            )
        out.append(
            {
                **base,
                "suite": "mqar",
                "case_id": f"mqar-{pair}",
                "metric": "accuracy",
                "value": accuracy,
                "unit": "",
                "stat": "value",
                "n": 1,
                "p20": None,
                "p80": None,
                "samples": None,
                "seq_len": 64,
            }
        )
    return out


def write(folder: Path, rs: list[dict[str, Any]]) -> Path:
    results.write_part(folder, rs, run_id=rs[0]["run_id"])
    return folder


def by_verdict(cmp: gate.Comparison, verdict: str) -> list[gate.Entry]:
    return [e for e in cmp.entries if e.verdict == verdict]


def test_aa_is_clean_and_planted_slowdown_is_caught(tmp_path: Path) -> None:
    base = write(tmp_path / "base", rows("b", seed=1))
    same = write(tmp_path / "same", rows("h", seed=2))
    aa = gate.compare([base], [same])
    assert aa.exit_code == 0, aa.to_markdown()
    assert not by_verdict(aa, "regression")
    slow = write(tmp_path / "slow", rows("h", seed=3, slow={"window/flex": 1.3}))
    cmp = gate.compare([base], [slow])
    assert cmp.exit_code == 1
    reg = by_verdict(cmp, "regression")
    assert {(e.method, e.backend, e.metric) for e in reg} == {("window", "flex", "latency_ms")}
    assert all(e.factor == pytest.approx(1.3, rel=0.05) and e.p_value < 0.05 for e in reg)


def test_big_but_noisy_difference_is_not_a_regression(tmp_path: Path) -> None:
    base = write(tmp_path / "base", rows("b", seed=1, noise=0.6))
    head = write(tmp_path / "head", rows("h", seed=2, noise=0.6, slow={"window/flex": 1.15}))
    cmp = gate.compare([base], [head], threshold=1.10)
    noisy = [e for e in cmp.entries if e.metric == "latency_ms" and e.factor and e.factor > 1.10]
    assert noisy, "the planted noise should produce differences beyond the threshold"
    assert all(e.verdict == "noisy" for e in noisy if e.p_value >= 0.05)
    assert all((e.verdict == "regression") == (e.p_value < 0.05) for e in noisy)


def test_status_changes_and_vanished_cases(tmp_path: Path) -> None:
    base = write(tmp_path / "base", rows("b", seed=1))
    head = write(tmp_path / "head", rows("h", seed=1, failed={"window/flex"}, drop={"mha/reference-256"}))
    cmp = gate.compare([base], [head])
    assert cmp.exit_code == 1
    failed = by_verdict(cmp, "failed")
    assert {(e.method, e.backend) for e in failed} == {("window", "flex")}
    assert "ok → error: RuntimeError: boom" in failed[0].note
    vanished = by_verdict(cmp, "vanished")
    assert {(e.suite, e.method, e.backend, e.workload) for e in vanished} == {
        ("latency", "mha", "reference", "N256"),
        ("memory", "mha", "reference", "N256"),
    }
    back = gate.compare([head], [base])
    assert {(e.method, e.backend) for e in by_verdict(back, "fixed")} == {("window", "flex")}
    assert by_verdict(back, "new") and back.exit_code == 0


def test_metric_directions(tmp_path: Path) -> None:
    base = write(tmp_path / "base", rows("b", seed=1, accuracy=0.9))
    worse = write(tmp_path / "worse", rows("h", seed=1, accuracy=0.7))
    better = write(tmp_path / "better", rows("h2", seed=1, accuracy=1.0, slow={"mha/sdpa": 0.5}))
    cmp = gate.compare([base], [worse])
    assert {(e.metric, e.verdict) for e in cmp.entries if e.suite == "mqar"} == {("accuracy", "regression")}
    up = gate.compare([base], [better])
    assert up.exit_code == 0
    assert {e.metric for e in by_verdict(up, "improvement")} == {"accuracy", "latency_ms"}
    table = metric_table()
    assert table.direction("peak_mem_bytes") == LOWER and table.direction("top1") == HIGHER
    assert table.direction("flops_useful") is None and table.direction("max_abs_err") is None


def test_machine_mismatch_compares_ratios_to_the_baseline(tmp_path: Path) -> None:
    base = write(tmp_path / "base", rows("b", seed=1, machine="cpu-A"))
    # a 2.5× slower machine, same code: raw timings would all "regress"
    other = write(tmp_path / "other", rows("h", seed=2, machine="cpu-B", scale=2.5))
    cmp = gate.compare([base], [other])
    assert cmp.normalised and any("mismatch" in w for w in cmp.warnings)
    assert cmp.exit_code == 0, cmp.to_markdown()
    lat = [e for e in cmp.entries if e.metric == "latency_ms"]
    assert {e.verdict for e in lat if (e.method, e.backend) == ("mha", "sdpa")} == {"untested"}
    assert all(e.factor == pytest.approx(1.0, abs=0.1) for e in lat if e.factor is not None)
    # on the slower machine, one backend is also 1.4× slower relative to the baseline
    slow = write(tmp_path / "slow", rows("h2", seed=2, machine="cpu-B", scale=2.5, slow={"window/flex": 1.4}))
    cmp = gate.compare([base], [slow])
    assert cmp.exit_code == 1
    assert {(e.method, e.backend) for e in by_verdict(cmp, "regression")} == {("window", "flex")}


def test_replicated_runs_are_pooled(tmp_path: Path) -> None:
    b = tmp_path / "base"
    h = tmp_path / "head"
    for r in range(3):
        t = T0 + timedelta(minutes=r)
        write(b / f"r{r}", with_sha(rows(f"b{r}", seed=10 + r, created=t), "base"))
        write(h / f"r{r}", with_sha(rows(f"h{r}", seed=20 + r, created=t, slow={"mha/sdpa": 1.3}), "head"))
    cmp = gate.compare([b], [h])
    assert {(e.method, e.backend, e.metric) for e in by_verdict(cmp, "regression")} == {("mha", "sdpa", "latency_ms")}


def test_rounds_are_paired_so_drift_between_rounds_cancels(tmp_path: Path) -> None:
    drift = (1.0, 3.0, 0.6)  # the machine's speed changes between rounds, alike for both sides
    for name, slow in (("aa", {}), ("planted", {"window/flex": 1.3})):
        b, h = tmp_path / name / "base", tmp_path / name / "head"
        for r, scale in enumerate(drift):
            t = T0 + timedelta(minutes=r)
            write(b / f"r{r}", with_sha(rows(f"{name}b{r}", seed=30 + r, created=t, scale=scale), "base"))
            write(h / f"r{r}", with_sha(rows(f"{name}h{r}", seed=40 + r, created=t, scale=scale, slow=slow), "head"))
        cmp = gate.compare([b], [h])
        lat = [e for e in cmp.entries if e.metric == "latency_ms"]
        assert all("paired bootstrap, 3 rounds" in e.note for e in lat)
        regressed = {(e.method, e.backend) for e in by_verdict(cmp, "regression")}
        assert regressed == ({("window", "flex")} if slow else set()), cmp.to_markdown()


def with_sha(rs: list[dict[str, Any]], sha: str) -> list[dict[str, Any]]:
    """Replicates must come from the same code: one git sha on every row."""
    return [{**r, "git_sha": sha} for r in rs]


def test_outputs(tmp_path: Path) -> None:
    base = write(tmp_path / "base", rows("b", seed=1))
    head = write(tmp_path / "head", rows("h", seed=2, slow={"<b>x</b>/flex": 2.0, "window/flex": 1.5}))
    cmp = gate.compare([base], [head])
    console = Console(record=True, width=200)
    cmp.render(console)
    text = console.export_text()
    assert "REGRESSION" in text and "window/flex" in text
    md = cmp.to_markdown()
    assert md.startswith("### ❌") and "| regression | latency: window/flex N128 |" in md
    doc = json.loads(cmp.to_json())
    assert doc["exit_code"] == 1 and any(e["verdict"] == "regression" for e in doc["entries"])


def test_unusable_input(tmp_path: Path) -> None:
    base = write(tmp_path / "base", rows("b", seed=1))
    with pytest.raises(gate.GateInputError, match="no results"):
        gate.compare([base], [tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(gate.GateInputError, match="no result rows"):
        gate.compare([base], [tmp_path / "empty"])
    table = pq.read_table(next(base.glob("*.parquet")))
    pq.write_table(table.replace_schema_metadata({b"attnbench.schema_version": b"7.1"}), tmp_path / "v7.parquet")
    with pytest.raises(gate.GateInputError, match="7.1"):
        gate.compare([base], [tmp_path / "v7.parquet"])
    with pytest.raises(gate.GateInputError, match="threshold"):
        gate.compare([base], [base], threshold=0.9)


FAKE_CLI = '''
"""A stand-in `attnbench run`: copies the template rows, scaled by impls/speed.py, into -o."""
import sys, uuid
from pathlib import Path
import pyarrow as pa, pyarrow.parquet as pq
from attnbench.impls.speed import SPEED

def app():
    args = sys.argv[1:]
    assert args[0] == "run" and "--no-report" in args, args
    out = Path(args[args.index("-o") + 1])
    out.mkdir(parents=True)
    t = pq.read_table(TEMPLATE)
    rows = t.to_pylist()
    run = uuid.uuid4().hex[:8]
    for r in rows:
        r["run_id"] = run
        if r["metric"] == "latency_ms" and r["method"] == "window":
            r["value"] *= SPEED
            r["samples"] = [s * SPEED for s in r["samples"]]
    pq.write_table(pa.Table.from_pylist(rows, schema=t.schema), out / f"part-{run}.parquet")
'''


def test_ab_mode_measures_each_commit(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "attnbench").mkdir(parents=True)
    (repo / "impls").mkdir()
    template = write(tmp_path / "template", rows("t", seed=1))
    (repo / "pyproject.toml").write_text(
        textwrap.dedent("""
        [tool.setuptools.package-dir]
        "attnbench" = "attnbench"
        "attnbench.impls" = "impls"
    """)
    )
    (repo / "attnbench" / "__init__.py").write_text("")
    (repo / "attnbench" / "cli.py").write_text(f"TEMPLATE = {str(next(template.glob('*.parquet')))!r}\n" + FAKE_CLI)
    (repo / "impls" / "__init__.py").write_text("")
    (repo / "impls" / "speed.py").write_text("SPEED = 1.0\n")

    def git(*a: str) -> None:
        subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True)

    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "base")
    (repo / "impls" / "speed.py").write_text("SPEED = 1.5\n")  # the working tree is slower
    cmp = gate.ab_compare(
        "HEAD",
        run_args=["--preset", "smoke"],
        repo=repo,
        rounds=2,
        console=Console(file=open("/dev/null", "w")),
    )  # noqa: SIM115
    assert cmp.exit_code == 1, cmp.to_markdown()
    assert {(e.method, e.metric) for e in by_verdict(cmp, "regression")} == {("window", "latency_ms")}
    assert cmp.base_label.startswith("HEAD (") and "2 interleaved rounds" in cmp.warnings[0]
    listed = subprocess.run(["git", "-C", str(repo), "worktree", "list"], capture_output=True, text=True)
    assert len(listed.stdout.strip().splitlines()) == 1  # the temporary worktree is gone
    with pytest.raises(gate.GateInputError, match="rev-parse"):
        gate.ab_compare("no-such-ref", run_args=[], repo=repo)
    assert sys.executable  # sides run with this interpreter


def test_nothing_in_common_fails(tmp_path: Path) -> None:
    base = write(tmp_path / "base", rows("b", seed=1))
    other = [{**r, "case_id": "other-" + r["case_id"]} for r in rows("h", seed=2)]
    head = write(tmp_path / "head", other)
    cmp = gate.compare([base], [head])
    assert cmp.nothing_compared and cmp.exit_code == gate.EXIT_NOTHING_COMPARED == 4
    assert cmp.headline().startswith("NOTHING COMPARED") and "no case in common" in cmp.headline()
    md = cmp.to_markdown()
    assert md.startswith("### ❌") and "NOTHING COMPARED" in md
    assert gate.compare([base], [head], allow_vanished=True).exit_code == 4  # still nothing compared
    assert json.loads(cmp.to_json())["exit_code"] == 4


def test_vanished_cases_fail_unless_allowed(tmp_path: Path) -> None:
    base = write(tmp_path / "base", rows("b", seed=1))
    head = write(tmp_path / "head", rows("h", seed=1, drop={"mha/reference-256"}))
    cmp = gate.compare([base], [head])
    assert cmp.vanished == 2 and not by_verdict(cmp, "regression")
    assert cmp.exit_code == gate.EXIT_VANISHED == 5
    assert cmp.headline().startswith("VANISHED CASES") and "2 base case(s) missing from HEAD" in cmp.headline()
    assert cmp.to_markdown().startswith("### ❌")
    allowed = gate.compare([base], [head], allow_vanished=True)
    assert allowed.exit_code == 0 and allowed.headline().startswith("OK") and "(allowed)" in allowed.headline()
    assert allowed.to_markdown().startswith("### ✅") and by_verdict(allowed, "vanished")
    slow = write(tmp_path / "slow", rows("h2", seed=3, slow={"window/flex": 1.3}, drop={"mha/reference-256"}))
    assert gate.compare([base], [slow]).exit_code == 1  # a regression outranks vanished cases


def test_a_corrupt_part_is_refused_not_skipped(tmp_path: Path) -> None:
    base = write(tmp_path / "base", rows("b", seed=1))
    head = write(tmp_path / "head", rows("h", seed=1))
    (head / "part-broken.parquet").write_bytes(b"PAR1 torn")
    with pytest.raises(gate.GateInputError, match="part-broken.parquet"):
        gate.compare([base], [head])


EVIL = "evil\r[x](https://e.example)\r\n![i](https://e.example/i.png) @team [/] \x0b|"


def test_markdown_and_console_escape_hostile_names(tmp_path: Path) -> None:
    def renamed(rs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**r, "method": EVIL} if r["method"] == "window" else r for r in rs]

    base = write(tmp_path / "base", renamed(rows("b", seed=1)))
    head = write(tmp_path / "head", renamed(rows("h", seed=3, slow={"window/flex": 1.3})))
    cmp = gate.compare([base], [head])
    assert cmp.exit_code == 1
    md = cmp.to_markdown()
    assert "\r" not in md and "\x0b" not in md
    rows_md = [ln for ln in md.splitlines() if ln.startswith("| regression |")]
    assert rows_md and all("evil" in ln for ln in rows_md)  # each entry stays on one table row
    assert all(len(re.findall(r"(?<!\\)\|", ln)) == 9 for ln in rows_md)  # 8 cells, no extra pipe
    assert not re.search(r"(?<!\\)[\[\]!]", "".join(rows_md))
    assert "@team" not in md and "@\u200bteam" in md
    console = Console(record=True, width=300)
    cmp.render(console)  # rich markup in a name must neither raise nor style
    assert "[/]" in console.export_text()
