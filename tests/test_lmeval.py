"""lm-eval integration: exported tasks, the `attnbench` / `attnbench-proxy` model types, the stock CLI
through `python -m attnbench.lmeval`, and the lm_eval suite. Offline: a tiny random Llama, local JSONL."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

import torch  # noqa: E402
from lm_fixture import build_tiny_lm  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from attnbench import lmeval, results  # noqa: E402
from attnbench.cli import app  # noqa: E402
from attnbench.metrics import CORE, metric_table  # noqa: E402
from attnbench.presets import load_preset  # noqa: E402
from attnbench.proxy import data as proxydata  # noqa: E402
from attnbench.registry import METHODS, SUITES  # noqa: E402
from attnbench.tasks import FILLER, INTRO, export_tasks, needle  # noqa: E402

OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module", autouse=True)
def offline(tmp_path_factory):
    """Offline flags and a private datasets cache, for this process and its subprocesses."""
    import datasets.config

    cache = tmp_path_factory.mktemp("hf_datasets")
    saved = {k: os.environ.get(k) for k in (*OFFLINE, "HF_DATASETS_CACHE")}
    os.environ.update({**OFFLINE, "HF_DATASETS_CACHE": str(cache)})
    old = datasets.config.HF_DATASETS_CACHE, datasets.config.HF_DATASETS_OFFLINE
    datasets.config.HF_DATASETS_CACHE, datasets.config.HF_DATASETS_OFFLINE = cache, True
    yield
    datasets.config.HF_DATASETS_CACHE, datasets.config.HF_DATASETS_OFFLINE = old
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tasks")
    export_tasks(folder, niah_lens=(64, 128), niah_samples=3, mqar_samples=4)
    return folder


def manager(folder: Path):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(folder), include_defaults=False)


def read(folder: Path, task: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{task}.jsonl").read_text().splitlines()]


def test_export_writes_yaml_and_jsonl_that_match_the_generators(tasks_dir: Path) -> None:
    import yaml

    cfg = yaml.safe_load((tasks_dir / "attnbench_niah.yaml").read_text())
    data = Path(cfg["dataset_kwargs"]["data_files"]["test"])
    assert data.is_absolute() and data.exists() and cfg["output_type"] == "multiple_choice"
    assert {"attnbench_niah", "attnbench_mqar", "attnbench_niah_tokens", "attnbench", "attnbench_tokens"} <= set(
        manager(tasks_dir).all_tasks)
    niah = read(tasks_dir, "attnbench_niah")
    assert len(niah) == 2 * 5 * 3
    assert len({(d["length"], d["depth"]) for d in niah[:10]}) == 10  # interleaved: any limit samples every cell
    k = 5
    for d in niah:
        assert d["needle_at"] == round(d["depth"] * (d["length"] - 2 * k - 2))  # the generator's depth rule
        before = d["context"][len(INTRO) + 1:].split(needle(d["key"]))[0].split()
        assert len(before) == d["needle_at"] and set(before) <= set(FILLER)
        assert d["choices"][d["label"]] == d["key"] and len(set(d["choices"])) == 4
    mqar = read(tasks_dir, "attnbench_mqar")
    assert len(mqar) == 4 * 8
    for d in mqar:
        pairs = d["context"].split(" . ")[0].removeprefix("key value pairs : ").split()
        assert dict(zip(pairs[::2], pairs[1::2], strict=True))[d["key"]] == d["answer"] == d["choices"][d["label"]]
        assert d["context"].count(" query ") == d["query_index"] + 1
    for d in read(tasks_dir, "attnbench_niah_tokens"):
        ids = [int(t) for t in d["context"].split()]
        start = ids.index(proxydata.NEEDLE)
        assert ids[-1] == proxydata.QUERY and ids[start + 1:start + 4] == [int(t) for t in d["target"].split()]


def test_simple_evaluate_runs_the_attnbench_model_type(tiny: Path, tasks_dir: Path) -> None:
    import lm_eval

    lmeval.register()
    out = lm_eval.simple_evaluate(model="attnbench", model_args=f"pretrained={tiny},method=mha,device=cpu",
                                  tasks=["attnbench_niah"], task_manager=manager(tasks_dir), limit=4,
                                  bootstrap_iters=0)
    res = out["results"]["attnbench_niah"]
    assert 0.0 <= res["acc,none"] <= 1.0 and out["n-samples"]["attnbench_niah"]["effective"] == 4
    with pytest.raises(ValueError, match="unknown parameter 'windw'"):
        lm_eval.simple_evaluate(model="attnbench", model_args=f"pretrained={tiny},method=sliding_window,windw=8",
                                tasks=["attnbench_niah"], task_manager=manager(tasks_dir), limit=1)
    assert lmeval.method_params("sliding_window", {"window": "8"}) == {"window": 8}


def test_stock_cli_finds_the_model_type_through_the_wrapper(tiny: Path, tasks_dir: Path) -> None:
    cmd = [sys.executable, "-m", "attnbench.lmeval", "run", "--model", "attnbench", "--model_args",
           f"pretrained={tiny},method=sliding_window,window=8", "--tasks", "attnbench_mqar", "--device", "cpu",
           "--include_path", str(tasks_dir), "--limit", "2"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=os.environ)
    assert res.returncode == 0, res.stderr[-3000:]
    assert re.search(r"attnbench_mqar\s*\|", res.stdout), res.stdout[-2000:]


def test_proxy_model_type_scores_integer_token_tasks_like_the_proxies(tmp_path: Path, tasks_dir: Path) -> None:
    import lm_eval

    from attnbench.proxy.train import ModelConfig, ProxyModel

    torch.manual_seed(0)
    model = ProxyModel(ModelConfig(method="mha", out_dim=256, vocab=256, d_model=16, n_heads=2, n_layers=1,
                                   max_len=320)).eval()
    ckpt = lmeval.save_proxy(model, tmp_path / "proxy.pt")
    lmeval.register()
    out = lm_eval.simple_evaluate(model="attnbench-proxy", model_args=f"path={ckpt}", tasks=["attnbench_tokens"],
                                  task_manager=manager(tasks_dir), limit=4, bootstrap_iters=0, log_samples=True)
    assert {"attnbench_niah_tokens", "attnbench_mqar_tokens"} <= set(out["results"])
    for task, metric in (("attnbench_niah_tokens", "exact_match"), ("attnbench_mqar_tokens", "acc")):
        for s in out["samples"][task]:
            ids = [int(t) for t in f"{s['doc']['context']} {s['doc']['target']}".split()]
            n = len(s["doc"]["target"].split())
            with torch.no_grad():  # attnbench's own rule: every target token is the argmax (teacher forced)
                pred = model(torch.tensor([ids[:-1]]))[0, -n:].argmax(-1).tolist()
            assert float(s[metric]) == float(pred == ids[-n:]), (task, s["doc"])


def run_cli(out: Path, *args: str):
    return CliRunner().invoke(app, ["run", "--preset", "smoke", "--suites", "lm_eval", "-o", str(out), "--no-report",
                                    *args])


def test_suite_writes_task_speed_and_logit_rows(tiny: Path, tmp_path: Path) -> None:
    res = run_cli(tmp_path, "--methods", "mha,sliding_window,agent", "--set", f'suite.lm_eval.model="{tiny}"',
                  "--set", "suite.lm_eval.limit=4", "--param", "sliding_window.window=8")
    assert res.exit_code == 0, res.output
    df = results.load([tmp_path])
    agent = df[df["method"] == "agent"]
    assert list(agent["status"]) == ["unsupported"] and "causal" in agent["error"].iloc[0]
    declared = [*metric_table().suite_metrics("lm_eval"), *CORE]
    exact = {s.name for s in metric_table().suite_metrics("lm_eval") if not s.is_pattern}
    for method in ("mha", "sliding_window"):
        rows = df[df["method"] == method]
        assert set(rows["status"]) == {"ok"}, rows[["metric", "status", "error"]]
        got = set(rows["metric"])
        assert exact <= got and "attnbench_niah_acc_stderr" in got
        assert all(any(s.matches(m) for s in declared) for m in got)
    diff = df[(df["method"] == "mha") & (df["metric"] == "logit_max_abs_diff")]["value"].iloc[0]
    assert diff < 1e-4


def test_without_a_model_every_case_is_skipped(tmp_path: Path) -> None:
    res = run_cli(tmp_path, "--methods", "mha,agent,moh")
    assert res.exit_code == 0, res.output
    df = results.load([tmp_path])
    assert len(df) == 3 and set(df["status"]) == {"skipped"}
    assert df["error"].str.contains("no model configured").all()


def test_without_the_extra_every_case_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    suite = SUITES.get("lm_eval")
    cases = suite.cases(load_preset("smoke", ['methods=["mha"]']), METHODS)
    assert cases and suite.applies_to(METHODS.get("mha"), cases[0].backend) == "needs the [lm] extra: " \
        "pip install -e '.[lm]'"
