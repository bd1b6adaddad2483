"""lm_eval: a local Hugging Face causal LM with its attention swapped, scored by EleutherAI's lm-eval.

One case per method (backend `reference` unless the section or `--backends` says otherwise) on the
model at `model` (a local folder; nothing is fetched). The case's workload is the model's attention
shape (heads, kv heads, head dim from its config.json) at `prefill_len`, causal. A case exports the
attnbench tasks (`attnbench.tasks.export_tasks`) into a temporary folder, loads the model with the
method applied (`attnbench.hf.load`) and runs `lm_eval.simple_evaluate` on `tasks` with `limit`
documents per task. Without the `[lm]` extra, or with no model configured, every case is `skipped`;
a method `attnbench.hf.why_not` refuses is `unsupported` with its reason.

Rows:
    <task>_<metric>[_<filter>]  every numeric metric lm-eval returns (attnbench tasks: acc, acc_norm;
                                other tasks are prefixed `lm_`), n = documents scored
    <task>_<metric>_stderr      its standard error (a row of its own)
    logit_max_abs_diff          max |logit − logit of the unmodified model (sdpa)| over the fixed `prompts`
    prefill_tok_s               prompt tokens per second, one forward of `prefill_len` random tokens (timed)
    decode_tok_s                greedy tokens per second over `decode_tokens` steps after that prefill,
                                with the KV cache (recomputing the sequence where the method turned it off)
    prefill_peak_mem_bytes      peak memory of that prefill above its baseline (CPU: peak RSS; CUDA: allocator)
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from attnbench.metrics import HIGHER, MIB, MetricSpec, higher, info, lower
from attnbench.presets import Preset
from attnbench.registry import MethodEntry, Registry, register_suite
from attnbench.settings import SettingsError, as_dict, resolve, settings
from attnbench.spec import Backend, Status, Workload, params_json
from attnbench.suite import Case, ResolvedCase, Row, status_row

NEEDS_EXTRA = "needs the [lm] extra: pip install -e '.[lm]'"
NO_MODEL = "no model configured: --set suite.lm_eval.model='\"/path/to/model\"' (a local Hugging Face folder)"
PROMPTS = ("the pass key is 1234 . remember it . what is the pass key ? the pass key is",
           "key value pairs : a 1 b 2 c 3 d 4 . query c answer 3 query a answer")
SELECTION = ("methods", "backends", "exclude", "params")


@settings
class LMEvalSettings:
    """`[suite.lm_eval]`."""

    model: str = ""
    tasks: tuple[str, ...] = ("attnbench_niah", "attnbench_mqar")
    limit: int | None = 20
    batch_size: int = 1
    prompts: tuple[str, ...] = PROMPTS
    prefill_len: int = 128
    decode_tokens: int = 16
    timing_reps: int = 3
    niah_lens: tuple[int, ...] = (64, 128, 256)
    seed: int = 0
    methods: tuple[str, ...] | None = None
    backends: tuple[Backend, ...] = (Backend.REFERENCE,)
    exclude: tuple[str, ...] = ()
    params: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.prefill_len < 2 or self.decode_tokens < 1 or self.timing_reps < 1 or self.batch_size < 1:
            raise ValueError("prefill_len >= 2, decode_tokens >= 1, timing_reps >= 1 and batch_size >= 1")


SMOKE = LMEvalSettings(limit=8, prefill_len=64, decode_tokens=8)
TIERS = {"smoke": SMOKE, "quick": LMEvalSettings(limit=40, prefill_len=256, decode_tokens=32),
         "full": LMEvalSettings(limit=None, prefill_len=2048, decode_tokens=128, timing_reps=5,
                                niah_lens=(512, 1024, 2048, 4096))}


def missing_extra() -> str | None:
    """Why the suite cannot run here (transformers or lm-eval missing), or None."""
    if any(importlib.util.find_spec(m) is None for m in ("transformers", "lm_eval")):
        return NEEDS_EXTRA
    return None


def model_workload(model: str, seq_len: int, device: str) -> Workload:
    """The model's attention shape (config.json) at `seq_len`; a 4-head stand-in when no model is set."""
    if not model:
        return Workload(batch=1, heads_q=4, heads_kv=4, seq_q=seq_len, seq_kv=seq_len, head_dim=64, causal=True,
                        device=device)
    path = Path(model).expanduser() / "config.json"
    if not path.is_file():
        raise SettingsError(f"suite.lm_eval.model: {model!r} is not a local Hugging Face model folder (no config.json)")
    cfg = json.loads(path.read_text())
    cfg = cfg.get("text_config", cfg)
    hq = int(cfg["num_attention_heads"])
    d = int(cfg.get("head_dim") or cfg["hidden_size"] // hq)
    return Workload(batch=1, heads_q=hq, heads_kv=int(cfg.get("num_key_value_heads") or hq), seq_q=seq_len,
                    seq_kv=seq_len, head_dim=d, causal=True, device=device)


def _rate(tokens: int, seconds: list[float], name: str) -> Row:
    """A tokens-per-second row from per-repetition seconds (median; p20/p80 of the rates)."""
    import numpy as np

    rates = np.array([tokens / max(s, 1e-12) for s in seconds])
    return Row(name, float(np.median(rates)), "tok/s", "median", len(rates), float(np.quantile(rates, 0.2)),
               float(np.quantile(rates, 0.8)), [float(r) for r in rates])


def metric_rows(results: dict[str, Any], exported: set[str]) -> list[Row]:
    """Rows of lm-eval's `results` dict: `<task>_<metric>[_<filter>]` and `..._stderr` rows."""
    rows = []
    n_samples = results.get("n-samples", {})
    for task, d in results["results"].items():
        prefix = task if task in exported or task.startswith("attnbench") else f"lm_{task}"
        n = int(n_samples.get(task, {}).get("effective", d.get("sample_len", 1)) or 1)
        for key, value in d.items():
            if "," not in key or isinstance(value, str) or value is None:
                continue
            metric, filt = key.split(",", 1)
            stderr = metric.endswith("_stderr")
            name = f"{prefix}_{metric.removesuffix('_stderr')}" + (f"_{filt}" if filt != "none" else "")
            rows.append(Row(name + "_stderr" * stderr, float(value), "fraction", "value", n))
    return rows


@register_suite
class LMEval:
    name = "lm_eval"
    version = 1
    kind = "proxy"
    metrics = (
        higher("attnbench_niah_acc", label="LM passkey acc", headline=True),
        higher("attnbench_mqar_acc", label="LM MQAR acc", headline=True),
        info("attnbench_*_stderr", "fraction"),
        higher("attnbench_*"),  # every other attnbench task metric (acc_norm, groups, token tasks)
        info("lm_*"),  # metrics of other lm-eval tasks: their direction is the task's own
        lower("logit_max_abs_diff", "logit", label="max |Δlogit| vs sdpa"),
        MetricSpec("prefill_tok_s", "tok/s", HIGHER, timed=True, label="prefill tok/s"),
        MetricSpec("decode_tok_s", "tok/s", HIGHER, timed=True, label="decode tok/s"),
        lower("prefill_peak_mem_bytes", "B", floor=MIB, label="prefill peak memory"),
    )

    def __init__(self) -> None:
        self._unavailable: str | None = None  # why the last planned preset cannot run at all

    def settings(self, preset: Preset) -> LMEvalSettings:
        section = preset.own_section(self.name)
        shared = preset.section(self.name)
        if "params" in shared:
            section["params"] = shared["params"]
        return resolve(LMEvalSettings, section, where=f"suite.{self.name}", tiers=TIERS, tier=preset.name)

    def cases(self, preset: Preset, methods: Registry[MethodEntry]) -> list[Case]:
        s = self.settings(preset)
        device = preset.device if preset.device not in ("", "auto") else "cpu"
        w = model_workload(s.model, s.prefill_len, device)
        self._unavailable = missing_extra() or (None if s.model else NO_MODEL)
        opts = json.dumps({k: v for k, v in as_dict(s).items() if k not in SELECTION}, sort_keys=True)
        top = list(preset.data.get("backends", ["*"]))
        backends = list(s.backends) if "backends" in preset.own_section(self.name) or any(
            ch in p for p in top for ch in "*?[") else [Backend(b) for b in top]
        out = []
        for entry in methods:
            overrides = dict(s.params.get(entry.name, {}))
            entry.spec.params(overrides)  # unknown keys raise before anything runs
            # attnbench.hf repeats the model's kv heads for a method that takes no grouped kv heads
            mw = w if entry.spec.capabilities.gqa else w.replace(heads_kv=w.heads_q)
            for backend in backends:
                if backend in entry.impls and preset.selects(entry.name, backend, self.name):
                    out.append(Case(self.name, entry.name, backend, mw, params_json(overrides), s.seed, preset.name,
                                    self.version, opts))
        return out

    def applies_to(self, entry: MethodEntry, backend: Backend) -> str | None:
        return self._unavailable

    def run(self, rc: ResolvedCase) -> list[Row]:
        o = rc.options
        why = missing_extra() or (None if o["model"] else NO_MODEL)
        if why:
            return [status_row(Status.SKIPPED, why)]
        import torch
        from transformers import AutoConfig

        from attnbench import hf

        path, device = str(Path(o["model"]).expanduser()), rc.case.workload.device
        params = rc.case.param_dict
        why = hf.why_not(rc.method, AutoConfig.from_pretrained(path, local_files_only=True),
                         backend=str(rc.backend), params=params)
        if why:
            return [status_row(Status.UNSUPPORTED, why)]
        base, tok = hf.load(path)
        base.set_attn_implementation("sdpa")
        prompts = [tok(p, return_tensors="pt").input_ids.to(device) for p in o["prompts"]]
        with torch.no_grad():
            ref = [base.to(device)(x, use_cache=False).logits.float() for x in prompts]
        del base
        model, tok = hf.load(path, rc.method, str(rc.backend), **params)
        model.to(device)
        with torch.no_grad():
            diff = max(float((model(x, use_cache=False).logits.float() - r).abs().max()) for x, r in zip(
                prompts, ref, strict=True))
        rows = [Row("logit_max_abs_diff", diff, "logit", "max", len(prompts))]
        rows += self.speed(model, o, device, rc.seed)
        rows += self.evaluate(model, tok, o, rc.seed)
        return rows

    @staticmethod
    def speed(model: Any, o: dict[str, Any], device: str, seed: int) -> list[Row]:
        """prefill_tok_s, decode_tok_s and prefill_peak_mem_bytes on `prefill_len` random tokens."""
        import torch

        from attnbench import memory
        from attnbench.timing import synchronize

        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, model.config.vocab_size, (1, o["prefill_len"]), generator=gen).to(device)
        cache = bool(getattr(model.config, "use_cache", True))
        key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"  # transformers 5

        def prefill() -> Any:
            return model(ids, use_cache=cache)

        def decode() -> float:
            out = prefill()
            seq, past = ids, getattr(out, key)
            nxt = out.logits[:, -1:].argmax(-1)
            synchronize(device)
            t0 = time.perf_counter()
            for _ in range(o["decode_tokens"]):
                seq = torch.cat([seq, nxt], 1)
                out = model(nxt, **{key: past}, use_cache=True) if cache else model(seq, use_cache=False)
                past, nxt = getattr(out, key), out.logits[:, -1:].argmax(-1)
            synchronize(device)
            return time.perf_counter() - t0

        def timed(fn: Any) -> float:
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            return time.perf_counter() - t0

        reps = o["timing_reps"]
        with torch.no_grad():
            timed(prefill)  # warm-up
            pre = [timed(prefill) for _ in range(reps)]
            decode()
            dec = [decode() for _ in range(reps)]
            if device.startswith("cuda"):
                peak: int | None = memory.cuda_peak_above_baseline(prefill)
            else:
                peak = memory.peak_rss_above_baseline(prefill) if memory.cpu_peak_supported() is None else None
        rows = [_rate(o["prefill_len"], pre, "prefill_tok_s"), _rate(o["decode_tokens"], dec, "decode_tok_s")]
        if peak is not None:
            rows.append(Row("prefill_peak_mem_bytes", float(peak), "B"))
        return rows

    @staticmethod
    def evaluate(model: Any, tok: Any, o: dict[str, Any], seed: int) -> list[Row]:
        """lm-eval's metrics for `tasks` on the exported attnbench tasks (and any built-in task named)."""
        import lm_eval
        from lm_eval.tasks import TaskManager

        from attnbench.lmeval import register
        from attnbench.tasks import export_tasks

        lm_cls, _ = register()
        lm = lm_cls(pretrained=model, tokenizer=tok, batch_size=o["batch_size"])
        with tempfile.TemporaryDirectory(prefix="attnbench-tasks-") as folder:
            names = export_tasks(folder, seed=seed, niah_lens=o["niah_lens"], tokens=False)
            tm = TaskManager(include_path=folder, include_defaults=any(t not in names for t in o["tasks"]))
            res = lm_eval.simple_evaluate(model=lm, tasks=list(o["tasks"]), task_manager=tm, limit=o["limit"],
                                          bootstrap_iters=100, random_seed=seed, numpy_random_seed=seed,
                                          torch_random_seed=seed, fewshot_random_seed=seed)
        return metric_rows(res, set(names))
