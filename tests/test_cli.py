"""CLI through typer's CliRunner: list, run, env, results compact, and one-line errors with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnbench import results
from attnbench.cli import app
from attnbench.registry import METHODS

cli = CliRunner()
FAST = ["--set", "shapes.seq_lens=[32]", "--set", "shapes.heads=2", "--set", "shapes.head_dim=8",
        "--set", "timing.min_time_s=0.0", "--set", "timing.max_reps=2"]


def test_list_json_has_every_method() -> None:
    res = cli.invoke(app, ["list", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert {m["name"] for m in data["methods"]} == set(METHODS.names())
    mha = next(m for m in data["methods"] if m["name"] == "mha")
    assert {"reference", "sdpa", "flex", "flex_compiled"} <= set(mha["backends"])
    assert "latency" in data["suites"]


def test_list_table() -> None:
    res = cli.invoke(app, ["list"])
    assert res.exit_code == 0 and "mha" in res.output


def test_run_then_compact(tmp_path: Path) -> None:
    out = tmp_path / "res"
    res = cli.invoke(app, ["run", "--preset", "smoke", "--suites", "flops", "--methods", "mha", "--backends",
                           "reference,sdpa", "-o", str(out), "--no-report", *FAST])
    assert res.exit_code == 0, res.output
    df = results.load([out])
    assert set(df["backend"]) == {"reference", "sdpa"} and set(df["status"]) == {"ok"}
    res = cli.invoke(app, ["results", "compact", str(out)])
    assert res.exit_code == 0 and len(list(out.glob("*.parquet"))) == 1
    assert len(results.load([out])) == len(df)


PROXY_TINY = {
    "mqar": "n_train=64 n_test=16 steps=2 eval_every=1 vocab=64 seq_len=[32] kv_pairs=[[2]]",
    "niah": "steps=2 min_len=16 max_len=24 eval_lens=[24] eval_depths=[0.5] eval_samples=2 d_model=16 batch_size=2",
    "icl_regression": "steps=2 eval_prompts=8 eval_ks=[4] n_examples=4 batch_size=4",
    "image_cls": "dataset=\"digits\" n_train=32 digits_epochs=1 batch_size=16 d_model=16",
}


def test_run_every_proxy_through_the_cli(tmp_path: Path) -> None:
    """The issue's command, at toy budgets: every proxy, a grouped and a non-causal method too."""
    sets = [a for suite, kv in PROXY_TINY.items() for item in kv.split() for a in ("--set", f"suite.{suite}.{item}")]
    res = cli.invoke(app, ["run", "--preset", "smoke", "--suite", "mqar,niah,icl_regression,image_cls",
                           "--methods", "mha,gqa,agent", "--param", "agent.agent_num=4", "-o", str(tmp_path),
                           "--no-report", *sets])
    assert res.exit_code == 0, res.output
    df = results.load([tmp_path])
    ok = df[df["status"] == "ok"]
    assert {"mqar_acc", "niah_acc_in_range", "icl_mse", "top1"} <= set(ok["metric"])
    assert set(ok[ok["method"] == "gqa"]["suite"]) == set(PROXY_TINY)  # 1-head MQAR: heads fitted
    agent = df[df["method"] == "agent"].groupby("suite")[["status", "error"]].first()
    assert agent.loc["image_cls", "status"] == "ok"
    causal = agent.drop("image_cls")
    assert (causal["status"] == "skipped").all() and causal["error"].str.contains("no causal form").all()


def test_param_override_reaches_cases(tmp_path: Path) -> None:
    res = cli.invoke(app, ["run", "--preset", "smoke", "--suites", "flops", "--methods", "sliding_window",
                           "--backends", "reference", "--param", "sliding_window.window=8", "-o",
                           str(tmp_path), "--no-report", *FAST])
    assert res.exit_code == 0, res.output
    assert json.loads(results.load([tmp_path])["params"].iloc[0]) == {"window": 8}


@pytest.mark.parametrize(("args", "message"), [
    (["run", "--methods", "mah"], "unknown method 'mah'; did you mean"),
    (["run", "--backends", "sdpaa"], "unknown backend 'sdpaa'"),
    (["run", "--suites", "latncy"], "unknown suite 'latncy'; did you mean latency"),
    (["run", "--preset", "quik"], "unknown preset 'quik'"),
    (["run", "--set", "shapes.heads=5", "--set", "shapes.kv_heads=2"], "not divisible by heads_kv=2"),
    (["run", "--methods", "sliding_window", "--param", "sliding_window.window=100000"], "window"),
    (["run", "--param", "sliding_window.windw=3"], "unknown parameter 'windw'"),
    (["run", "--param", "nosuch.window=3"], "unknown method 'nosuch'"),
    (["run", "--shard", "3/2"], "--shard"),
    (["run", "--suites", "mqar", "--set", "suite.mqar.densities=[2.0]"], "densities must lie in (0, 1]"),
    (["run", "--suites", "mil", "--set", "suite.mil.bag_size=0"], "suite.mil.bag_size: Input should be greater"),
    (["run", "--suites", "hallucination", "--set", "suite.hallucination.pair_prob=1.5"], "pair_prob"),
    (["run", "--suites", "kv_convert", "--set", "suite.kv_convert.budgets=[1.5]"], "budget 1.5"),
    (["results", "compact", "/nonexistent/dir"], "no part files"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    if args[0] == "run":
        args = [*args, "-o", str(tmp_path / "r"), "--no-report", "--preset" if "--preset" not in args else "",
                "smoke" if "--preset" not in args else ""]
        args = [a for a in args if a]
    res = cli.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "r").exists(), "nothing may run before input is validated"


def test_env_json() -> None:
    res = cli.invoke(app, ["env", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["device_kind"] in ("cpu", "cuda")


def test_analyze_writes_head_rows_and_heatmaps(tmp_path: Path) -> None:
    res = cli.invoke(app, ["analyze", "--steps", "3", "--no-hunt", "-o", str(tmp_path / "r"),
                           "--heatmaps", str(tmp_path / "h")])
    assert res.exit_code == 0, res.output
    df = results.load([tmp_path / "r"])
    assert {"head_importance_loss", "sink_mass"} <= set(df["metric"])
    layers_heads = {tuple(sorted(json.loads(p))) for p in df["params"]}
    assert layers_heads == {("head", "layer")}
    assert (tmp_path / "h" / "sink_mass.svg").read_text().lstrip().startswith("<")


def test_analyze_bad_method() -> None:
    res = cli.invoke(app, ["analyze", "--method", "mhaa"])
    assert res.exit_code == 2 and "unknown method 'mhaa'" in res.output
