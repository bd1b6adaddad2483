"""`attnbench` command line: list, run, report, compare, analyze, export-tasks, env, results compact.

Exit codes of `attnbench run`: 0 every case ended ok, unsupported or skipped; 2 bad input (one plain
line on stderr, nothing written); 3 a case ended error, wrong, timeout or oom (`--allow-failures`
exits 0); 130 interrupted (Ctrl-C), 143 terminated (SIGTERM): finished parts are kept either way.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

import attnbench
from attnbench.metrics import DENSE_BASELINE
from attnbench.presets import PresetError, load_preset

# The registry (→ torch) is imported inside the commands: `attnbench --help` never imports torch.

app = typer.Typer(help="Benchmark attention mechanisms: speed, memory, FLOPs, correctness, accuracy.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
results_app = typer.Typer(help="Manage results folders.", no_args_is_help=True)
app.add_typer(results_app, name="results")
console = Console(width=None if sys.stdout.isatty() else 160)
# Messages are plain text: no markup read from user input, no hard wrapping in logs.
err = Console(stderr=True, markup=False, highlight=False, emoji=False, soft_wrap=True)
EXIT_BAD_INPUT, EXIT_FAILURES, EXIT_SIGINT, EXIT_SIGTERM = 2, 3, 130, 143


def _version(value: bool) -> None:
    if value:
        typer.echo(f"attnbench {attnbench.__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_version,
                                                help="Print the version and exit.")] = False) -> None:
    """Benchmark attention mechanisms: speed, memory, FLOPs, correctness, accuracy."""


def fail(msg: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    """Print a one-line plain error on stderr and return the Exit to raise."""
    sys.stderr.write("error: " + " ".join(str(msg).split()) + "\n")
    sys.stderr.flush()
    return typer.Exit(code)


@app.command("list")
def list_methods(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
                 family: Annotated[str | None, typer.Option(help="Only this family.")] = None) -> None:
    """Methods × backends × capabilities, whether each backend runs on this machine, and the suites."""
    from attnbench import device as devmod
    from attnbench.registry import METHODS, SUITES, load_plugins

    load_plugins()
    entries = [e for e in METHODS if family is None or e.spec.family == family]
    here = devmod.best_device()
    why = {e.name: {b.value: devmod.runs_here(e, b, here) for b in e.backends} for e in entries}
    if as_json:
        out = [{"name": e.name, "title": e.spec.title, "family": e.spec.family, "kind": e.spec.kind,
                "paper": {"title": e.spec.paper.title, "year": e.spec.paper.year, "url": e.spec.paper.url},
                "backends": [b.value for b in e.backends], "defaults": e.spec.params(),
                "capabilities": {"causal": e.spec.capabilities.causal,
                                 "noncausal": e.spec.capabilities.noncausal, "gqa": e.spec.capabilities.gqa,
                                 "backward": e.spec.capabilities.backward,
                                 "dims": list(e.spec.capabilities.dims)}, "runs_here": why[e.name]}
               for e in entries]
        typer.echo(json.dumps({"methods": out, "suites": SUITES.names(), "device": here,
                               "backends": devmod.backend_availability(here)}, indent=2, default=str))
        return
    table = Table(title=f"{len(entries)} methods")
    for col in ("method", "family", "kind", "backends", f"runs here ({here})", "mask", "gqa", "bwd", "dims",
                "paper"):
        table.add_column(col, no_wrap=col in ("method", "family", "kind"), overflow="fold")
    for e in entries:
        c = e.spec.capabilities
        mask = "both" if c.causal and c.noncausal else ("causal" if c.causal else "full")
        no = {b: r.split(" (")[0] for b, r in why[e.name].items() if r}
        runs = "; ".join(f"✗ {b}: {r}" for b, r in no.items()) or "✓"
        table.add_row(e.name, e.spec.family, e.spec.kind, ", ".join(b.value for b in e.backends), runs, mask,
                      "✓" if c.gqa else "", "✓" if c.backward else "", ",".join(map(str, c.dims)),
                      f"{e.spec.paper.arxiv} ({e.spec.paper.year})")
    console.print(table)
    console.print(f"suites: {', '.join(SUITES.names())}")


@app.command()
def run(
    preset: Annotated[str, typer.Option(help="smoke | quick | full | gpu, or a .toml path.")] = "quick",
    suites: Annotated[list[str] | None, typer.Option("--suites", "--suite", help="Comma list.")] = None,
    methods: Annotated[list[str] | None, typer.Option("--methods", "--method", help="Comma list/globs.")] = None,
    backends: Annotated[list[str] | None, typer.Option("--backends", "--backend", help="Comma list.")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda[:i].")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Preset override key.path=value.")] = None,
    param: Annotated[list[str] | None, typer.Option(help="Method param, e.g. sliding_window.window=64.")] = None,
    out: Annotated[Path, typer.Option("-o", "--out", help="Results folder (Parquet parts).")] = Path("results"),
    site: Annotated[Path, typer.Option(help="Where to render the leaderboard.")] = Path("site"),
    report: Annotated[bool, typer.Option(help="Render the site after the run.")] = True,
    resume: Annotated[bool, typer.Option(help="Skip cases already finished ok in --out.")] = False,
    shard: Annotated[str, typer.Option(help="Run shard i of n, as i/n.")] = "1/1",
    isolate: Annotated[bool, typer.Option(help="Each case in its own process.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Seconds per case.")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (recorded).")] = None,
    budget: Annotated[float | None, typer.Option(help="Seconds for the whole run; later cases are "
                                                      "recorded as skipped.")] = None,
    allow_failures: Annotated[bool, typer.Option(help="Exit 0 even when cases ended error, wrong, timeout "
                                                      "or oom (otherwise exit 3).")] = False,
    retry_crashed: Annotated[bool, typer.Option(help="With --resume, run again (in process) cases that "
                                                     "crashed the process in an earlier run; otherwise they "
                                                     "are recorded as error.")] = False,
    executor: Annotated[str, typer.Option(help="local | ray: one Ray task per case; the parts are written "
                                               "here.")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address (e.g. auto) for --executor ray; "
                                                     "default: a local Ray.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved plan (cases, budgets, a rough "
                                                             "time estimate) and exit; runs and writes nothing.")]
    = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --dry-run: the plan as JSON.")] = False,
) -> None:
    """Run a preset (default: quick on the best device) into Parquet, then render the site.

    Exit 0 when every case ended ok/unsupported/skipped, 2 on bad input, 3 when a case ended error,
    wrong, timeout or oom (unless --allow-failures), 130 on Ctrl-C, 143 on SIGTERM."""
    from attnbench import executors, plan, results
    from attnbench.registry import METHODS, UnknownNameError, load_plugins
    from attnbench.runner import PlanError, Runner

    try:
        pool = executors.make(executor, address)
    except executors.ExecutorError as exc:
        raise fail(str(exc)) from None
    try:
        plan.check_numbers(timeout=timeout, budget=budget, threads=threads)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if as_json and not dry_run:
        raise fail("--json goes with --dry-run (the results of a run are in -o)")
    if report and site.exists() and not site.is_dir():
        raise fail(f"--site {site} is a file, not a folder")
    load_plugins()
    try:
        lists = {"suites": suites, "methods": methods, "backends": backends}
        overrides, explicit = plan.overrides(set_, lists, device, param, METHODS.get)
        i, n = plan.parse_shard(shard)
        pre = load_preset(preset, overrides)
    except (PresetError, UnknownNameError, ValueError) as exc:
        raise fail(str(exc)) from None
    created = [] if dry_run else _writable_folder(out)
    try:
        runner = Runner(pre, out, resume=resume, shard=(i, n), isolate=isolate, timeout_s=timeout,
                        threads=threads, budget_s=budget, retry_crashed=retry_crashed,
                        explicit_params=frozenset(explicit))
        cases = runner.plan()
    except (PresetError, PlanError, UnknownNameError, ValueError) as exc:
        plan.remove_empty(created)
        raise fail(str(exc)) from None
    if dry_run:
        described = plan.describe(runner, cases)
        if as_json:
            typer.echo(json.dumps(described, indent=2, default=str))
        else:
            plan.render(described, console)
        return
    try:
        summary = runner.run(cases, executor=pool)
    except results.OutputError as exc:
        raise fail(f"{exc}; the cases finished before are kept in {out}; "
                   f"`attnbench run --resume -o {out}` continues once it takes files again") from None
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary.statuses.items())) or "nothing new"
    err.print(f"run {summary.run_id}: {summary.planned} cases ({summary.skipped_done} already done), "
              f"rows: {counts}; {summary.seconds:.0f} s → {out}/")
    failed = summary.failure_text()
    if summary.interrupted:
        if failed:
            err.print(failed)
        err.print(f"interrupted: finished cases are kept; `attnbench run --resume -o {out}` completes the rest")
        raise typer.Exit(EXIT_SIGTERM if summary.signum == signal.SIGTERM else EXIT_SIGINT)
    if report:
        _render(out, site)
    if failed:
        err.print(f"{failed} → exit {0 if allow_failures else EXIT_FAILURES}"
                  f"{'' if allow_failures else ' (--allow-failures exits 0)'}")
        if not allow_failures:
            raise typer.Exit(EXIT_FAILURES)


def _writable_folder(folder: Path) -> list[Path]:
    """Create `folder` if needed and check it takes files; returns the folders it created (exit 2 if not)."""
    from attnbench.plan import writable_folder

    try:
        return writable_folder(folder)
    except ValueError as exc:
        raise fail(str(exc)) from None


def warn(msg: str) -> None:
    """A one-line plain warning on stderr."""
    sys.stderr.write("warning: " + " ".join(str(msg).split()) + "\n")


def _render(results_dir: Path, site: Path) -> None:
    """The site step of `run`: results already written are safe whatever happens here."""
    from attnbench import results
    from attnbench.reports import build_site

    try:
        with results.skipped_files() as skipped:
            index = build_site([results_dir], site)
    except (results.SchemaError, FileNotFoundError, OSError) as exc:
        raise fail(f"site not rendered ({exc}); the results in {results_dir} are kept") from None
    for msg in skipped:
        warn(msg)
    err.print(f"leaderboard → {index}")


@app.command("report")
def report_cmd(
    inputs: Annotated[list[Path], typer.Argument(help="Results folders, Parquet or pytest-benchmark .json files.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Site folder.")] = Path("site"),
    fmt: Annotated[str, typer.Option("--format", help="html | md")] = "html",
) -> None:
    """Render results from any number of machines into a static leaderboard (or Markdown)."""
    from attnbench import reports, results

    if fmt not in ("html", "md"):
        raise fail(f"unknown format {fmt!r}; use html or md")
    from attnbench.registry import load_plugins

    load_plugins()
    try:
        with results.skipped_files() as skipped:
            if fmt == "md":
                text = reports.markdown_summary(inputs)
            else:
                index = reports.build_site(inputs, out)
    except (results.SchemaError, FileNotFoundError, results.OutputError) as exc:
        raise fail(str(exc)) from None
    for msg in skipped:
        warn(msg)
    if fmt == "md":
        typer.echo(text)
    else:
        err.print(f"leaderboard → {index}")


@app.command()
def compare(
    base: Annotated[list[Path] | None, typer.Argument(help="BASE results, then HEAD results (folders, Parquet, "
                                                            "or pytest-benchmark .json).")] = None,
    threshold: Annotated[float, typer.Option(help="Regression factor.")] = 1.10,
    alpha: Annotated[float, typer.Option(help="Significance level.")] = 0.05,
    baseline: Annotated[str, typer.Option(help="Same-run baseline for cross-machine ratios.")] = DENSE_BASELINE,
    fmt: Annotated[str, typer.Option("--format", help="table | md | json")] = "table",
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    ab: Annotated[str | None, typer.Option("--ab", help="Run base commit REF and the working tree "
                                                         "interleaved, then compare.")] = None,
    rounds: Annotated[int, typer.Option(help="A/B rounds.")] = 3,
    keep: Annotated[Path | None, typer.Option(help="In --ab mode, keep both sides' results here.")] = None,
    run_args: Annotated[str, typer.Option(help="Arguments for `attnbench run` in --ab mode.")]
    = "--preset smoke --suites latency",
    allow_vanished: Annotated[bool, typer.Option(help="Cases of BASE missing from HEAD do not fail.")] = False,
) -> None:
    """Compare HEAD with BASE. Exit 0 ok, 1 regression or failed case, 2 unusable input,
    4 nothing compared (no case in common), 5 cases of BASE vanished from HEAD."""
    import shlex

    from attnbench import gate

    fmt = "json" if as_json else fmt
    if fmt not in ("table", "md", "json"):
        raise fail(f"unknown format {fmt!r}; use table, md or json")
    if rounds < 1:
        raise fail(f"--rounds must be at least 1, got {rounds}")
    from attnbench.registry import load_plugins

    load_plugins()
    try:
        if ab:
            cmp = gate.ab_compare(ab, run_args=shlex.split(run_args), rounds=rounds, threshold=threshold,
                                  alpha=alpha, keep=keep, allow_vanished=allow_vanished)
        else:
            if not base or len(base) != 2:
                raise fail("compare takes BASE and HEAD (or --ab REF)")
            cmp = gate.compare([base[0]], [base[1]], threshold=threshold, alpha=alpha, baseline=baseline,
                               allow_vanished=allow_vanished)
    except gate.GateInputError as exc:
        raise fail(str(exc)) from None
    if fmt == "json":
        typer.echo(cmp.to_json())
    elif fmt == "md":
        typer.echo(cmp.to_markdown())
    else:
        cmp.render(console)
    raise typer.Exit(cmp.exit_code)


@app.command()
def analyze(
    model: Annotated[Path | None, typer.Argument(help="A torch.save'd proxy model; omit to train one.")] = None,
    method: Annotated[str, typer.Option(help="Attention method of the model to train.")] = "mha",
    preset: Annotated[str, typer.Option(help="Preset tier of the training settings.")] = "smoke",
    seed: Annotated[int, typer.Option()] = 0,
    steps: Annotated[int | None, typer.Option(help="Override the training step budget.")] = None,
    hunt: Annotated[bool, typer.Option(help="Also run the HeadHunter greedy head search.")] = True,
    out: Annotated[Path, typer.Option("-o", "--out", help="Results folder for the rows.")] = Path("results"),
    heatmaps: Annotated[Path, typer.Option(help="Folder for layer×head heatmap SVGs.")] = Path("analysis"),
    model_kind: Annotated[str, typer.Option("--model-kind", help="shapes (the hallucination Shapes-VLM) or vit "
                                            "(an image_cls-style ViT on digits, with head pattern clustering).")
                          ] = "shapes",
) -> None:
    """Per-layer × per-head scores (importance, VHD, sinks, distance; ViT: pattern clusters) as rows and figures."""
    from datetime import UTC, datetime

    from attnbench import device as devmod
    from attnbench import results
    from attnbench.registry import METHODS, SUITES, UnknownNameError, load_plugins

    load_plugins()
    try:
        METHODS.get(method)
        load_preset(preset)
    except (UnknownNameError, PresetError) as exc:
        raise fail(str(exc)) from None
    if model is not None and not model.exists():
        raise fail(f"no model file at {model}")
    if model_kind not in ("shapes", "vit"):
        raise fail(f"unknown --model-kind {model_kind!r}; valid: shapes, vit")
    analyzer = SUITES.get("hallucination")  # the suite whose proxy models `analyze` inspects
    rows, heatmap_svg = analyzer.analyze(model, method=method, preset=preset, seed=seed, steps=steps, hunt=hunt,
                                         kind=model_kind)
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S-analysis")
    info = devmod.capture("cpu").as_dict()
    context = dict(run_id=run_id, created_at=datetime.now(UTC), backend="reference",
                   case_id=f"analysis-{method}" + ("-vit" if model_kind == "vit" else ""),
                   family=METHODS.get(method).spec.family, preset=preset, seed=seed, status="ok", error="",
                   stat="value", n=1, **info)
    full = [results.complete_row(r, **context) for r in rows]
    part = results.write_part(out, full, run_id=run_id)
    heatmaps.mkdir(parents=True, exist_ok=True)
    for metric in sorted({r["metric"] for r in rows}):
        (heatmaps / f"{metric}.svg").write_text(heatmap_svg(rows, metric))
    err.print(f"{len(full)} head-score rows → {part}; heatmaps → {heatmaps}/")


@app.command("export-tasks")
def export_tasks_cmd(
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder for the task YAML and JSONL data.")] = Path("tasks"),
    seed: Annotated[int, typer.Option(help="Seed of the generated data.")] = 0,
) -> None:
    """attnbench's proxies (passkey/NIAH, MQAR) as lm-eval tasks with local data; nothing is fetched.

    Score any local Hugging Face model with an attnbench attention on them:
    `python -m attnbench.lmeval run --model attnbench --model_args pretrained=PATH,method=NAME
    --tasks attnbench --include_path OUT`."""
    from attnbench.tasks import export_tasks

    _writable_folder(out)
    names = export_tasks(out, seed=seed)
    err.print(f"{len(names)} lm-eval tasks and groups → {out}/: {', '.join(names)}")


@app.command()
def env(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The device and software a run here would record, plus Python, CUDA/cuDNN/driver, GPU clocks, peer
    libraries and whether the git tree is dirty."""
    from attnbench import device as devmod

    info = devmod.environment(devmod.best_device())
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for k, v in info.items():
        console.print(f"[bold]{k}[/bold]: {v}", highlight=False)


@results_app.command("compact")
def results_compact(folder: Annotated[Path, typer.Argument(help="Results folder.")] = Path("results")) -> None:
    """Merge a folder's part files into one Parquet file (exit 1 when corrupt parts were left in place)."""
    from attnbench import results

    try:
        with results.skipped_files() as skipped:
            merged = results.compact(folder)
    except (FileNotFoundError, results.SchemaError, results.OutputError) as exc:
        raise fail(str(exc)) from None
    for msg in skipped:
        warn(msg)
    err.print(f"compacted → {merged}")
    if skipped:
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
