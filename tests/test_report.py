"""The static leaderboard: synthetic results from two GPU "devices" (plus a real CPU run when the
runner is importable) render into a linked, escaped site and a Markdown summary."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attnbench import results
from attnbench.benchjson import load_inputs, rows_from_benchmark_json
from attnbench.reports import build_site, markdown_summary
from attnbench.reports import data as D

XSS = "<script>alert(1)</script>"
DEVICES = {"NVIDIA H100 80GB HBM3": 1.0, "NVIDIA A100-SXM4-80GB": 2.6}
# (method, backend, family, speed relative to dense)
ENTRIES = [
    ("mha", "sdpa", "dense", 1.0),
    ("mha", "reference", "dense", 3.0),
    ("toy_linear", "native", "linear", 0.4),
    (XSS, "flex", "sparse-local", 0.7),
]
SEQ = (256, 1024, 4096)


def _row(**kw: Any) -> dict[str, Any]:
    row = dict.fromkeys(results.COLUMNS)
    row.update(
        status="ok",
        error="",
        stat="value",
        unit="",
        n=1,
        params="{}",
        suite_version=1,
        batch=1,
        heads=8,
        kv_heads=8,
        head_dim=64,
        dtype="bfloat16",
        causal=False,
        mode="fwd",
        seed=0,
        preset="synthetic",
        torch_version="2.13.0",
        num_threads=1,
        hostname="box",
        git_sha="abc123",
    )
    row.update(kw)
    row["seq_kv"] = row["seq_len"]
    row["workload_id"] = row["workload_id"] or f"B1-Hq8-Hkv8-N{row['seq_len']}-D64-bf16-full-fwd"
    return row


def synthetic_rows(device: str, slow: float, run_id: str, created: datetime) -> list[dict[str, Any]]:
    """One device's rows over every suite, with samples, statuses and accuracy proxies."""
    base = {
        "run_id": run_id,
        "created_at": created,
        "device_name": device,
        "device_kind": "cuda",
        "device_capability": "9.0" if "H100" in device else "8.0",
    }
    out: list[dict[str, Any]] = []
    for method, backend, family, speed in ENTRIES:
        m = dict(base, method=method, backend=backend, family=family)
        for n in SEQ:
            cid = f"lat-{method}-{backend}-{n}"
            if method == "toy_linear" and n == 4096 and "A100" in device:
                out.append(
                    _row(
                        **m,
                        suite="latency",
                        case_id=cid,
                        seq_len=n,
                        metric="status",
                        status="oom",
                        error="CUDA out of memory. Tried to allocate 8.00 GiB",
                    )
                )
                continue
            ms = 0.01 * slow * speed * (n / 256) ** (1.2 if family == "linear" else 1.8)
            samples = [ms * (1 + 0.01 * k) for k in range(-3, 4)]
            tflops = 4 * 8 * n * n * 64 / (ms * 1e-3) / 1e12
            peak = 989.0 if "H100" in device else 312.0
            out += [
                _row(
                    **m,
                    suite="latency",
                    case_id=cid,
                    seq_len=n,
                    metric="latency_ms",
                    value=ms,
                    unit="ms",
                    stat="median",
                    n=7,
                    p20=samples[1],
                    p80=samples[5],
                    samples=samples,
                ),
                _row(**m, suite="latency", case_id=cid, seq_len=n, metric="setup_ms", value=0.3, unit="ms"),
                _row(
                    **m,
                    suite="latency",
                    case_id=cid,
                    seq_len=n,
                    metric="tflops",
                    value=tflops,
                    unit="TFLOP/s",
                    stat="median",
                ),
                _row(
                    **m,
                    suite="latency",
                    case_id=cid,
                    seq_len=n,
                    metric="pct_peak",
                    value=100 * tflops / peak,
                    unit="%",
                    stat="median",
                ),
                _row(
                    **m,
                    suite="latency",
                    case_id=cid,
                    seq_len=n,
                    metric="speedup_vs_dense",
                    value=1.0 / speed,
                    unit="x",
                    stat="median",
                ),
            ]
            out.append(
                _row(
                    **m,
                    suite="memory",
                    case_id=f"mem-{method}-{backend}-{n}",
                    seq_len=n,
                    metric="peak_mem_bytes",
                    value=float(n * n * (2 if family == "dense" else 0.1) + 1e6),
                    unit="bytes",
                    stat="max",
                )
            )
            out.append(
                _row(
                    **m,
                    suite="flops",
                    case_id=f"fl-{method}-{backend}-{n}",
                    seq_len=n,
                    metric="flops_useful",
                    value=4.0 * 8 * n * n * 64,
                    unit="FLOP",
                )
            )
            # a metric this renderer has never heard of
            out.append(
                _row(
                    **m,
                    suite="flops",
                    case_id=f"fl-{method}-{backend}-{n}",
                    seq_len=n,
                    metric="mystery_metric",
                    value=float(n),
                    unit="widgets",
                )
            )
        wrong = method == XSS
        out.append(
            _row(
                **m,
                suite="correctness",
                case_id=f"cor-{method}-{backend}",
                seq_len=64,
                metric="max_abs_err",
                value=0.3 if wrong else 1e-6,
                status="wrong" if wrong else "ok",
                error="max abs err 0.3 > tol 0.02" if wrong else "",
            )
        )
        if backend == "reference":
            continue
        if method == "toy_linear":
            out.append(
                _row(
                    **m,
                    suite="image_cls",
                    case_id=f"img-{method}",
                    seq_len=64,
                    metric="status",
                    status="unsupported",
                    error="toy_linear has no 2-D form",
                )
            )
        else:
            out.append(
                _row(
                    **m,
                    suite="image_cls",
                    case_id=f"img-{method}",
                    seq_len=64,
                    metric="top1",
                    value=0.8 * speed,
                )
            )
        for n in (64, 128):
            acc = min(1.0, 0.5 + 0.4 / speed) if family != "linear" else 0.6
            out += [
                _row(
                    **m,
                    suite="mqar",
                    case_id=f"mqar-{method}-{n}",
                    seq_len=n,
                    metric="mqar_acc",
                    value=acc,
                    unit="fraction",
                ),
                _row(
                    **m,
                    suite="mqar",
                    case_id=f"mqar-{method}-{n}",
                    seq_len=n,
                    metric="mqar_acc_k4",
                    value=acc * 0.9,
                    unit="fraction",
                ),
            ]
        for n in (512, 1024, 2048):  # one NIAH case; a row per grid cell with seq_len = the cell's length
            for depth in (0.0, 0.5, 1.0):
                out.append(
                    _row(
                        **m,
                        suite="niah",
                        case_id=f"niah-{method}",
                        seq_len=n,
                        unit="fraction",
                        metric=f"niah_acc_depth{depth:g}",
                        value=1.0 - depth * n / 8192,
                    )
                )
        out.append(
            _row(
                **m,
                suite="niah",
                case_id=f"niah-{method}",
                seq_len=1024,
                metric="niah_acc_in_range",
                value=0.9,
                unit="fraction",
                stat="mean",
            )
        )
        out.append(
            _row(
                **m,
                suite="icl_regression",
                case_id=f"icl-{method}",
                seq_len=33,
                metric="icl_mse",
                value=0.1 + 0.05 * speed,
                unit="mse",
            )
        )
        for k in (1, 2, 4, 8):
            for curve, v in (("model", 1.0 / k + 0.05 * speed), ("ols", 1.0 / k)):
                out.append(
                    _row(
                        **m,
                        suite="icl_regression",
                        case_id=f"icl-{method}",
                        seq_len=k,
                        unit="mse",
                        metric=f"icl_curve_{curve}",
                        value=v,
                        stat="mean",
                    )
                )
    return out


def write_synthetic(folder: Path) -> list[Path]:
    """Two devices, each in its own results folder; returns the folders."""
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    dirs = []
    for i, (dev, slow) in enumerate(DEVICES.items()):
        d = folder / f"dev{i}"
        results.write_part(d, synthetic_rows(dev, slow, f"run{i}", t0 + timedelta(hours=i)), run_id=f"run{i}")
        dirs.append(d)
    return dirs


def real_cpu_run(folder: Path) -> Path | None:
    """A tiny real CPU latency run through the lead's runner, or None where it is not available."""
    try:
        from attnbench.presets import load_preset
        from attnbench.runner import Runner
    except ImportError:
        return None
    pre = load_preset(
        "smoke",
        [
            'suites=["latency"]',
            'methods=["mha"]',
            'backends=["sdpa", "reference"]',
            'device="cpu"',
            "shapes.seq_lens=[64]",
            "suite.latency.seq_lens=[64]",
        ],
    )
    out = folder / "cpu"
    Runner(pre, out).run()
    return out


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.scripts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for key in ("href", "src"):
            if a.get(key):
                self.refs.append(str(a[key]))
        if tag == "script":
            self.scripts.append(str(a.get("src")))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    tmp = tmp_path_factory.mktemp("report")
    inputs = write_synthetic(tmp)
    index = build_site(inputs, tmp / "site")
    return index, inputs


def test_site_pages_links_and_plots(site: tuple[Path, list[Path]]) -> None:
    index, _ = site
    root = index.parent
    pages = sorted(root.glob("*.html"))
    names = {p.name for p in pages}
    assert {"index.html", "devices.html", "methods.html", "suite-latency.html", "suite-niah.html"} <= names
    assert any(n.startswith("method-mha") for n in names)
    for page in pages:
        parser = _Links()
        parser.feed(page.read_text())
        assert parser.scripts == ["static/site.js"], page.name
        for ref in parser.refs:
            if ref.startswith(("http://", "https://", "data:", "#")):
                continue
            assert (root / ref.split("#")[0]).is_file(), f"{page.name} links to missing {ref}"
    svgs = list((root / "plots").glob("*.svg"))
    assert len(svgs) >= 8
    for svg in svgs:
        ET.parse(svg)  # well-formed, so the browser can load it
    niah = (root / "suite-niah.html").read_text()
    assert niah.count("needle depth") >= 6  # a heatmap per method/backend and device


def test_every_string_is_escaped(site: tuple[Path, list[Path]]) -> None:
    index, _ = site
    for page in index.parent.glob("*.html"):
        text = page.read_text()
        assert XSS not in text, page.name
        assert "alert(1)" not in text or "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in index.read_text()
    for svg in (index.parent / "plots").glob("*.svg"):
        assert "<script" not in svg.read_text()


def test_leaderboard_cells(site: tuple[Path, list[Path]]) -> None:
    index, _ = site
    html = index.read_text()
    assert html.count('class="sortable') >= 4  # ranked leaderboard + aggregates per device
    for dev in DEVICES:
        assert dev in html
    assert re.search(
        r'class="st st-oom" title="CUDA out of memory', (index.parent / "suite-latency.html").read_text()
    )
    assert 'class="st st-wrong"' in html  # the XSS method fails correctness
    assert "fast₁" in html and "win rate" in html
    assert "MQAR accuracy" in html and "NIAH accuracy" in html and "ICL MSE" in html and "top-1" in html
    icl = (index.parent / "suite-icl_regression.html").read_text()
    assert "error vs number of in-context examples" in icl
    assert 'data-family="linear"' in html
    flops = (index.parent / "suite-flops.html").read_text()
    assert "mystery metric" in flops  # unknown metrics get a generic column
    method = next(index.parent.glob("method-mha*.html")).read_text()
    assert "Attention Is All You Need" in method and "https://arxiv.org/abs/1706.03762" in method
    foreign = next(index.parent.glob("method-toy_linear*.html")).read_text()
    assert "Not registered in this installation" in foreign
    devices = (index.parent / "devices.html").read_text()
    assert "A100" in devices and "% of peak" in devices


def test_markdown_summary(site: tuple[Path, list[Path]]) -> None:
    _, inputs = site
    md = markdown_summary(inputs)
    assert "### NVIDIA H100 80GB HBM3" in md and "### NVIDIA A100-SXM4-80GB" in md
    assert XSS not in md and "&lt;script&gt;" in md
    assert "| oom |" in md or "oom" in md
    table_lines = [ln for ln in md.splitlines() if re.match(r"\| \d+ \| mha \|", ln)]
    assert len(table_lines) == 2 and all("| sdpa |" in ln for ln in table_lines)  # one row per method and device
    ranks = [ln.split("|")[2].strip() for ln in md.splitlines() if re.match(r"\| \d+ \|", ln)][:3]
    assert ranks == ["&lt;script&gt;alert(1)&lt;/script&gt;", "mha", "toy\\_linear"]  # A100: toy_linear ran oom
    assert "ranked by speedup vs dense" in md


def test_unknown_schema_major_is_refused(tmp_path: Path) -> None:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    table = results.to_table(synthetic_rows("X", 1.0, "r", t0)[:3])
    table = table.replace_schema_metadata({b"attnbench.schema_version": b"9.0"})
    pq.write_table(table, tmp_path / "future.parquet")
    with pytest.raises(results.SchemaError, match="9.0"):
        build_site([tmp_path], tmp_path / "site")


def test_latest_run_per_case_and_multi_row_metrics(tmp_path: Path) -> None:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    old = synthetic_rows("GPU", 1.0, "old", t0)
    new = synthetic_rows("GPU", 2.0, "new", t0 + timedelta(days=1))
    results.write_part(tmp_path, old, run_id="old")
    results.write_part(tmp_path, new, run_id="new")
    df = load_inputs([tmp_path])
    assert set(df["run_id"]) == {"new"}
    icl = df[
        (df["suite"] == "icl_regression") & (df["metric"] == "icl_curve_model") & (df["method"] == "mha")
    ]
    assert len(icl) == 4  # one row per k (seq_len override) survives de-duplication


def test_aggregates() -> None:
    import pandas as pd

    rows = []
    for pair, times in (("mha/sdpa", (1.0, 1.0)), ("a/x", (0.5, 2.0)), ("b/y", (0.8, None))):
        m, b = pair.split("/")
        for n, t in zip((1, 2), times, strict=True):
            base = {
                "pair": pair,
                "method": m,
                "backend": b,
                "case_id": f"{pair}{n}",
                "batch": 1,
                "heads": 1,
                "head_dim": 1,
                "dtype": "f",
                "causal": False,
                "mode": "fwd",
                "seq_len": n,
            }
            if t is None:
                rows.append({**base, "metric": "status", "status": "oom", "value": None})
            else:
                rows += [
                    {**base, "metric": "latency_ms", "status": "ok", "value": t},
                    {**base, "metric": "speedup_vs_dense", "status": "ok", "value": 1.0 / t},
                ]
    lat = pd.DataFrame(rows)
    assert D.fast_p(lat, "a/x", 1.0, set()) == (0.5, 2)
    assert D.fast_p(lat, "a/x", 1.0, {"a/x"}) == (0.0, 2)
    assert D.fast_p(lat, "b/y", 1.0, set()) == (0.5, 2)
    wins = D.win_rates(lat)
    # shape 1: a < b < mha; shape 2: mha < a, b failed (loses to both)
    assert wins["a/x"] == pytest.approx(3 / 4)
    assert wins["mha/sdpa"] == pytest.approx(2 / 4)
    assert wins["b/y"] == pytest.approx(1 / 4)


def test_benchmark_json_bridge(tmp_path: Path) -> None:
    doc = {
        "machine_info": {"node": "ci", "cpu": {"brand_raw": "Some CPU"}},
        "commit_info": {"id": "deadbeef"},
        "datetime": "2025-01-02T03:04:05.000000",
        "version": "5.1.0",
        "benchmarks": [
            {
                "group": "mha",
                "name": "test_mha[256]",
                "fullname": "tests/bench/x.py::test_mha[256]",
                "params": {"n": 256},
                "extra_info": {"backend": "sdpa", "seq_len": 256},
                "stats": {
                    "min": 0.001,
                    "max": 0.003,
                    "mean": 0.002,
                    "median": 0.002,
                    "q1": 0.0015,
                    "q3": 0.0025,
                    "rounds": 5,
                    "data": [0.001, 0.0015, 0.002, 0.0025, 0.003],
                },
            }
        ],
    }
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(doc))
    rows = rows_from_benchmark_json(path)
    assert len(rows) == 1 and set(rows[0]) == set(results.COLUMNS)
    r = rows[0]
    assert (r["method"], r["backend"], r["seq_len"], r["metric"]) == ("mha", "sdpa", 256, "latency_ms")
    assert r["value"] == pytest.approx(2.0) and len(r["samples"]) == 5 and r["p20"] < r["p80"]
    assert json.loads(r["params"]) == {"n": 256}
    pa.Table.from_pylist(rows, schema=results.SCHEMA)  # typed
    index = build_site([path], tmp_path / "site")
    assert "Some CPU" in index.read_text()


def test_real_cpu_run_renders_next_to_synthetic(tmp_path: Path) -> None:
    cpu = real_cpu_run(tmp_path)
    if cpu is None:
        pytest.skip("attnbench.runner is not available yet")
    index = build_site([*write_synthetic(tmp_path), cpu], tmp_path / "site")
    html = index.read_text()
    df = load_inputs([cpu])
    cpu_name = df["device_name"].iloc[0]
    assert cpu_name in html
    assert len(D.prepare(load_inputs([cpu]), {})["device"].unique()) == 1


HOSTILE = "ctl\x01\x0b\r\n[x](https://e.example) ![i](https://e.example/i.png) @team\r$x$"


def test_md_escape_keeps_one_line_and_neutralises_links() -> None:
    from attnbench.markdown import md_escape

    out = md_escape("a\rb\r\nc\nd\x0be\x00f\u2028g [x](https://e.example) ![i](u) @team a\\|b")
    assert "\r" not in out and "\n" not in out and "\x0b" not in out and "\u2028" not in out
    assert out.startswith("a b c d e f g ")
    assert "\\[x\\](https://e.example)" in out and "\\!\\[i\\](u)" in out
    assert not re.search(r"(?<!\\)[\[\]!]", out)
    assert "@team" not in out and "@\u200bteam" in out
    assert out.endswith("a\\\\\\|b")  # a backslash cannot un-escape the pipe


def _hostile_latency(folder: Path) -> Path:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    rs = [r for r in synthetic_rows("GPU", 1.0, "r", t0) if r["suite"] == "latency"]
    rs = [{**r, "method": HOSTILE} if r["method"] == "toy_linear" else r for r in rs]
    results.write_part(folder, rs, run_id="r")
    return folder


def test_hostile_names_stay_in_their_cell_and_plots_stay_valid_xml(tmp_path: Path) -> None:
    folder = _hostile_latency(tmp_path / "in")
    (folder / "part-torn.parquet").write_bytes(b"PAR1 torn")  # a corrupt part is skipped, and named
    with pytest.warns(results.SkippedFileWarning, match="part-torn.parquet"):
        md = markdown_summary([folder])
    assert "\r" not in md and "\x01" not in md and "\x0b" not in md
    lines = [ln for ln in md.splitlines() if "ctl" in ln]
    assert lines and all(re.match(r"\| \d+ \| ctl", ln) and ln.endswith("|") for ln in lines)
    assert not re.search(r"(?<!\\)[\[\]!]", "".join(lines)) and "@team" not in md
    with pytest.warns(results.SkippedFileWarning, match="part-torn.parquet"):
        index = build_site([folder], tmp_path / "site")
    svgs = list((index.parent / "plots").glob("*.svg"))
    assert svgs and any("ctl" in s.read_text() for s in svgs)
    for svg in svgs:
        ET.parse(svg)


def test_plot_labels_with_control_characters_are_valid_svg(tmp_path: Path) -> None:
    from attnbench.reports.plots import PlotWriter

    w = PlotWriter(tmp_path)
    bad = "m\x00e\x08t\x0bh\x0c\x1f\x7f\ud800\ufffe\r\nod"
    plots = [
        w.lines({bad: [(1.0, 1.0), (2.0, 3.0)]}, title=bad, xlabel=bad, ylabel=bad),
        w.bars({bad: {bad: 1.0}}, title=bad, ylabel=bad),
        w.heatmap([[0.5]], xlabels=[bad], ylabels=[bad], title=bad, xlabel=bad, ylabel=bad),
        w.pareto([(bad, 1.0, 1.0), ("b", 2.0, 2.0)], title=bad, xlabel=bad, ylabel=bad),
    ]
    for p in plots:
        assert p is not None
        ET.parse(tmp_path / p.src)


def test_no_rows_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(results.NoResultsError, match="no result rows"):
        build_site([tmp_path / "empty"], tmp_path / "site")
    with pytest.raises(results.NoResultsError, match="no result rows"):
        markdown_summary([tmp_path / "empty"])


# -- the ranked overview, downloads, history, plot styles ------------------------------------------


def _groups(html: str, table_prefix: str) -> list[list[list[str]]]:
    """Per method group of the ranked table whose id starts with `table_prefix`: its rows' cell texts."""
    start = html.index(f'<table id="{table_prefix}')
    body = html[start : html.index("</table>", start)]
    out = []
    for grp in re.findall(r'<tbody class="grp".*?</tbody>', body, re.S):
        rows = re.findall(r"<tr class=\"(?:best|alt)\".*?</tr>", grp, re.S)
        cells = [re.findall(r"<td[^>]*>(.*?)</td>", r, re.S) for r in rows]
        out.append([[re.sub(r"<[^>]+>", "", c).strip() for c in row] for row in cells])
    return out


def test_overview_ranks_one_row_per_method_by_speedup(site: tuple[Path, list[Path]]) -> None:
    index, _ = site
    html = index.read_text()
    groups = _groups(html, "lb-nvidia-h100")
    best = [g[0] for g in groups]
    methods = [r[1] for r in best]
    assert sorted(methods) == sorted({"mha", "toy_linear", "&lt;script&gt;alert(1)&lt;/script&gt;"})
    # speedup vs dense on H100: toy_linear 2.5×, the XSS method 1.43×, mha 1×
    assert methods == ["toy_linear", "&lt;script&gt;alert(1)&lt;/script&gt;", "mha"]
    assert [r[0].split()[0] for r in best] == ["1", "2", "3"]
    mha = groups[methods.index("mha")]
    assert mha[0][2] == "sdpa" and [r[2] for r in mha[1:]] == ["reference"]  # the fused backend, not reference
    assert 'class="rankby"' in html and "MQAR accuracy (higher is better)" in html
    assert "latency (lower is better)" in html


def test_ranking_model_keys_and_reference_fallback(tmp_path: Path) -> None:
    from attnbench.reports.leaderboard import Results, leaderboard
    from attnbench.reports.ranking import ranked

    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    rows = [r for r in synthetic_rows("GPU", 1.0, "r", t0) if not (r["method"] == "mha" and r["backend"] == "sdpa")]
    res = Results.of(results.to_table(rows).to_pandas())
    t = ranked(leaderboard(res, "GPU"))
    labels = [label for label, _ in t.columns]
    by_method = {cells[1].text: cells for _, cells in t.rows}
    assert by_method["mha"][2].text == "reference"  # only a reference backend: it stands in
    assert len(t.rows) == len(t.children) == 3
    keys = {label: (col, d) for col, label, d in t.rank_keys}
    assert t.rank_keys[0][1] == "speedup vs dense" and keys["latency"][1] == -1 and keys["MQAR accuracy"][1] == 1
    assert labels[keys["MQAR accuracy"][0]] == "MQAR accuracy"
    speed = [cells[keys["speedup vs dense"][0]].sort for _, cells in t.rows]
    assert speed == sorted(speed, reverse=True)


def test_downloads_exist_and_round_trip(site: tuple[Path, list[Path]]) -> None:
    import pandas as pd

    index, inputs = site
    root = index.parent
    html = index.read_text()
    links = re.findall(r'<a href="(tables/[^"]+)" download>', html)
    assert len(links) >= 8 and all((root / ln).is_file() for ln in links)  # CSV + Parquet of each table
    for csv in [root / ln for ln in links if ln.endswith(".csv")]:
        a, b = pd.read_csv(csv, keep_default_na=False), pd.read_parquet(csv.with_suffix(".parquet"))
        assert list(a.columns) == list(b.columns) and len(a) == len(b)
        for col in (c for c in b.columns if c.endswith("(value)")):
            assert a[col].replace("", float("nan")).astype(float).round(9).equals(b[col].round(9))
    lb = next(root / ln for ln in links if "--lb-nvidia-h100" in ln and ln.endswith(".parquet"))
    df = pd.read_parquet(lb)
    assert set(df["method"]) >= {"mha", "toy_linear", XSS} and df["best"].sum() == 3 and len(df) == 4
    assert "speedup vs dense (value)" in df.columns
    for page in ("methods.html", "devices.html", "suite-latency.html"):
        assert 'href="tables/' in (root / page).read_text(), page
    raw = pd.read_parquet(root / "results.parquet")
    assert len(raw) == len(load_inputs(inputs, latest_only=False))
    assert len(load_inputs([root / "results.parquet"])) == len(load_inputs(inputs))
    assert 'href="results.parquet"' in html


def test_history_only_with_two_commits(site: tuple[Path, list[Path]], tmp_path: Path) -> None:
    index, _ = site
    assert not list(index.parent.glob("history-*.html"))  # one sha: no history
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    for i, (sha, slow) in enumerate((("aaa111", 1.0), ("bbb222", 0.8), ("ccc333", 0.5))):
        rows = [{**r, "git_sha": sha} for r in synthetic_rows("GPU", slow, f"r{i}", t0 + timedelta(days=i))]
        results.write_part(tmp_path / "in", rows, run_id=f"r{i}")
    out = build_site([tmp_path / "in"], tmp_path / "site").parent
    page = next(out.glob("history-mha*.html"))
    text = page.read_text()
    assert "aaa111" in text and "bbb222" in text and "ccc333" in text
    assert "speedup vs dense" in text and "MQAR accuracy" in text
    assert text.index("aaa111") < text.index("ccc333")  # oldest first
    svg = re.search(r'<img src="(plots/[0-9a-f]+\.svg)"', text)
    assert svg and "bbb222" in (out / svg.group(1)).read_text()  # commits name the x axis
    method = next(out.glob("method-mha*.html")).read_text()
    assert f'href="{page.name}"' in method


def test_many_series_get_distinct_styles(tmp_path: Path) -> None:
    from attnbench.reports.plots import PlotWriter, series_style

    for n in (12, 20, 40):
        styles = [series_style(i, n) for i in range(n)]
        assert len({(c, m) for c, m, _ in styles}) == n
    assert len({series_style(i, 12)[0] for i in range(12)}) == 12  # twelve colours, not ten repeating
    w = PlotWriter(tmp_path)
    p = w.lines({f"s{i}": [(1.0, i + 1.0), (2.0, i + 2.0)] for i in range(14)}, title="t", xlabel="x", ylabel="y")
    assert p is not None
    svg = (tmp_path / p.src).read_text()
    assert len(set(re.findall(r"stroke: (#[0-9a-f]{6})", svg))) >= 14


def test_cross_device_plots_one_metric_per_axis(site: tuple[Path, list[Path]]) -> None:
    from attnbench.reports.devices import cross_device
    from attnbench.reports.leaderboard import Results

    index, inputs = site
    res = Results.of(load_inputs(inputs))
    peaks = {"NVIDIA H100 80GB HBM3": 989.0, "NVIDIA A100-SXM4-80GB": 312.0}
    got = cross_device(res.df, res.devices, {}, lambda d, dt: peaks.get(d))
    assert got is not None
    _, bars = got
    assert set(bars) == {"% of peak (%)", "speedup vs dense (×)"}
    speed = [v for g in bars["speedup vs dense (×)"].values() for v in g.values()]
    assert sorted(set(round(v, 3) for v in speed)) == [0.333, 1.0, 1.429, 2.5]
    devices = (index.parent / "devices.html").read_text()
    assert "% of peak (%) by device" in devices and "speedup vs dense (×) by device" in devices
    assert "% of peak / speedup" not in devices


def _density_rows() -> list[dict[str, Any]]:
    """MQAR cases: mha (dense, no density row), moba on a ladder (0.30) and dense at its length (0.98),
    sliding_window at 0.25, and dma only ever dense (its leaderboard cell is greyed)."""
    base = dict(run_id="r", created_at=datetime(2025, 1, 1, tzinfo=UTC), device_name="CPU box", device_kind="cpu",
                suite="mqar", backend="reference", seq_len=64)
    cases = [("mha", "dense", None, 0.99), ("moba", "sparse-dynamic", 0.30, 0.60),
             ("moba", "sparse-dynamic", 0.98, 0.97), ("sliding_window", "sparse-local", 0.25, 0.40),
             ("dma", "sparse-dynamic", 0.99, 0.98)]
    out = []
    for i, (method, family, dens, acc) in enumerate(cases):
        m = dict(base, method=method, family=family, case_id=f"mqar-{i}", params=json.dumps({"i": i}))
        out.append(_row(**m, metric="mqar_acc", value=acc, unit="fraction"))
        if dens is not None:
            out.append(_row(**m, metric="effective_density", value=dens, unit="ratio"))
    return out


def test_density_curves_and_dense_rows_are_greyed(tmp_path: Path) -> None:
    import pandas as pd

    from attnbench.reports.density import curves, dense_cases

    df = D.prepare(pd.DataFrame(_density_rows()), {})
    lines = curves(df, "mqar", "mqar_acc")
    assert lines["moba/reference"] == [(0.30, 0.60), (0.98, 0.97)]
    assert lines["sliding_window/reference"] == [(0.25, 0.40)]
    assert lines["mha (dense ceiling)"] == [(0.25, 0.99), (1.0, 0.99)]  # flat across the densities seen
    assert dense_cases(df) == {"mqar-2": "dense at this length: effective density 0.98",
                               "mqar-4": "dense at this length: effective density 0.99"}

    results.write_part(tmp_path / "res", _density_rows(), run_id="r")
    index = build_site([tmp_path / "res"], tmp_path / "site")
    html = index.read_text()
    assert "MQAR accuracy vs the density each sparse method really attended" in html  # figure on the board
    svg = next(s for s in (index.parent / "plots").glob("*.svg") if "vs effective density" in s.read_text())
    text = svg.read_text()
    assert "moba/reference" in text and "sliding_window/reference" in text and "dma/reference" in text
    suite = (index.parent / "suite-mqar.html").read_text()
    grey = re.findall(r'<td class="[^"]*\bdense\b[^"]*"[^>]*title="([^"]*)"', suite)
    assert grey and all("dense at this length: effective density 0.9" in t for t in grey)
    assert sum("effective density 0.98" in t for t in grey) >= 3  # the whole moba 0.98 row
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", suite, re.S)
    assert not any("dense at this length" in r for r in rows if "0.3" in r and "moba" in r)
    board = re.findall(r'<td class="([^"]*)"[^>]*title="([^"]*dense at this length[^"]*)"', html)
    assert board and all("dense" in cls.split() for cls, _ in board)  # dma: every case dense
    assert not any("effective density 0.98" in t for _, t in board)  # moba's mean mixes sparse and dense cases


def test_bootstrap_interval_rows_fold_into_their_metric_cell() -> None:
    """`<m>_lo`/`<m>_hi` rows (e.g. an intervention's delta vs base) show as `[lo, hi]` in m's cell, not as columns."""
    import pandas as pd

    rows = [_row(suite="hallucination", method="gift", backend="reference", seq_len=64, case_id="c1",
                 metric=m, value=v, unit="fraction", device_kind="cpu")
            for m, v in (("delta_pope_acc", -0.05), ("delta_pope_acc_lo", -0.08), ("delta_pope_acc_hi", -0.02),
                         ("chair_i", 0.04))]
    df = D.prepare(pd.DataFrame(rows), {"gift": "intervention"})
    table = D.pivot_table(df, "t", {})
    labels = [c[1] for c in table.columns]
    assert "delta_pope_acc" in labels and not any(x.endswith(("_lo", "_hi")) for x in labels)
    cell = table.rows[0][1][labels.index("delta_pope_acc")]
    assert "[" in cell.text and "−0.08" in cell.text.replace("-", "−") and cell.sort == -0.05


def test_varying_params_take_list_values() -> None:
    """A list-valued param (`--param 'gna.kernel_size=[8,16]'`) beside a number must not crash the figures."""
    import pandas as pd

    from attnbench.reports.figures import varying_params

    rows = pd.DataFrame({"params": ['{"kernel_size": 7, "stride": 1}', '{"kernel_size": [8, 16], "stride": 1}']})
    assert varying_params(rows) == ["kernel_size"]


def test_an_intervention_that_never_acted_is_greyed() -> None:
    """VAR with no detected sink equals its base by construction: its row is greyed with that reason."""
    import pandas as pd

    rows = [_row(suite="hallucination", method="var", backend="reference", seq_len=64, case_id=c,
                 metric=m, value=v, unit="fraction", device_kind="cpu")
            for c, active in (("idle", 0.0), ("acts", 0.4))
            for m, v in (("pope_adversarial_f1", 0.8), ("intervention_active", active))]
    df = D.prepare(pd.DataFrame(rows), {"var": "intervention"})
    table = D.pivot_table(df, "t", {})
    greyed = ["dense" in " ".join(c.cls for c in cells) for _, cells in table.rows]
    assert sorted(greyed) == [False, True]
    assert any("inactive" in c.title for _, cells in table.rows for c in cells)
