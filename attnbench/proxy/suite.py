"""The base of the accuracy-proxy suites: settings per preset tier, cases, applicability, head fitting."""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from typing import Any

from attnbench.metrics import MetricSpec
from attnbench.presets import Preset
from attnbench.proxy.train import ModelConfig
from attnbench.registry import METHODS, MethodEntry, Registry
from attnbench.spec import Backend, Workload, params_json
from attnbench.suite import Case


def settings_for(defaults: Mapping[str, Mapping[str, Any]], preset_name: str,
                 section: Mapping[str, Any]) -> dict[str, Any]:
    """A suite's settings: its tier defaults (smoke/quick/full; gpu → full) overridden by
    the preset section's keys that the suite knows (kernel-suite keys like `seq_lens` of
    `[shapes]` are ignored unless the suite defines them)."""
    tier = preset_name if preset_name in defaults else ("full" if preset_name == "gpu" else "quick")
    out = dict(defaults[tier])
    for k, v in section.items():
        if k in out or k in ("methods", "backends", "exclude", "params", "seeds"):
            out[k] = v
    return out


# -- shared suite plumbing ---------------------------------------------------------------------
def expand_variants(s: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The settings once per entry of their `variants` (a list of overrides; empty = once as is)."""
    return [{**s, **v} for v in s.get("variants") or [{}]]


def method_params(section: Mapping[str, Any], entry: MethodEntry) -> dict[str, Any]:
    """Preset overrides `params.<method>` for one method, validated against its defaults."""
    overrides = dict(section.get("params", {}).get(entry.name, {}))
    entry.spec.params(overrides)  # unknown keys raise before anything runs
    return overrides


def accepts_spatial(entry: MethodEntry) -> bool:
    """Does the method's reference take a `spatial` grid (2-D methods)?"""
    return "spatial" in inspect.signature(entry.reference.fn).parameters


def fit_heads(entry: MethodEntry, backend: str, w: Workload, params: Mapping[str, Any],
              opts: dict[str, Any]) -> tuple[Workload, dict[str, Any]]:
    """The task's workload with the fewest extra heads (model width kept) the method can run.

    Proxies fix the model width; a grouped method (e.g. gqa's 4 query heads per kv head) cannot
    run a 1-head MQAR model. Such a method gets the smallest head count ≥ the task's, dividing
    the width into even head widths (RoPE needs them), that its checks accept; `heads_note` in
    the options says so. Otherwise `w` is returned unchanged and the runner records the method's
    own reason.
    """
    first = entry.why_not(Backend(backend), entry.spec.shape(w, params), params)
    if first is None:
        return w, opts
    d = w.d_model
    for h in range(w.heads_q + 1, d + 1):
        if d % h or (d // h) % 2:
            continue
        trial = w.replace(heads_q=h, heads_kv=h, head_dim=d // h)
        if entry.why_not(Backend(backend), entry.spec.shape(trial, params), params) is None:
            note = f"{entry.name} cannot run {w.heads_q} head(s) ({first}); trained with {h}"
            return trial, {**opts, "heads_note": note}
    return w, opts


class ProxySuite:
    """Base of the proxy suites: settings per preset tier, cases, applicability, model building.

    Subclasses set `name`, `version`, `defaults` ({"smoke"|"quick"|"full": settings}), `causal`
    and implement `tasks(settings, entry)` → [(Workload, options)] and `run(case)`.
    """

    name = ""
    version = 1
    kind = "proxy"
    metrics: tuple[MetricSpec, ...] = ()
    causal = True  # the task is next-token / causal
    takes_grid = False  # 2-D-only methods apply (image patches)
    defaults: dict[str, dict[str, Any]] = {}

    def settings(self, preset: Preset) -> dict[str, Any]:
        return settings_for(self.defaults, preset.name, preset.section(self.name))

    def applies_to(self, entry: MethodEntry, backend: Backend) -> str | None:
        caps = entry.spec.capabilities
        if not caps.backward:
            return f"{self.name} trains a model and {entry.name} has no backward"
        if self.causal and not caps.causal:
            return f"{self.name} is a causal (next-token) task and {entry.name} has no causal form"
        if not self.causal and not caps.noncausal:
            return f"{self.name} is bidirectional and {entry.name} is causal only"
        if 1 not in caps.dims and not self.takes_grid:
            return f"{self.name} is a 1-D sequence task and {entry.name} takes only {caps.dims}-D grids"
        return None

    def tasks(self, s: dict[str, Any], entry: MethodEntry,
              device: str) -> list[tuple[Workload, dict[str, Any]]]:
        raise NotImplementedError

    def cases(self, preset: Preset, methods: Registry[MethodEntry]) -> list[Case]:
        s = self.settings(preset)
        section = preset.section(self.name)
        device = preset.device if preset.device not in ("", "auto") else "cpu"
        out = []
        for entry in methods:
            for backend in self.backends(preset, s):
                if Backend(backend) not in entry.impls or not preset.selects(entry.name, backend, self.name):
                    continue
                overrides = method_params(section, entry)
                params = params_json(overrides)
                for w, opts in self.tasks(s, entry, device):
                    w, opts = fit_heads(entry, backend, w, entry.spec.params(overrides), opts)
                    for seed in s["seeds"]:
                        out.append(Case(self.name, entry.name, backend, w, params, int(seed), preset.name,
                                        self.version, json.dumps(opts, sort_keys=True)))
        return out

    def backends(self, preset: Preset, s: dict[str, Any]) -> list[str]:
        """Backends to train with: the suite section's `backends`, else an explicit (wildcard-free)
        top-level selection such as `--backends sdpa`, else the tier default (`reference`)."""
        if "backends" in preset.section(self.name):
            return list(s["backends"])
        top = list(preset.data.get("backends", ["*"]))
        return top if not any(ch in p for p in top for ch in "*?[") else list(s["backends"])

    @staticmethod
    def why_not_at(case: Case, seq_len: int) -> str | None:
        """Why the case's method cannot run sequences of `seq_len` tokens (e.g. a kernel longer
        than a short eval prompt), or None; evaluation skips such lengths instead of failing."""
        entry = METHODS.get(case.method)
        params = entry.spec.params(case.param_dict)
        w = entry.spec.shape(case.workload.replace(seq_q=seq_len, seq_kv=seq_len), params)
        return entry.why_not(Backend(case.backend), w, params)

    @staticmethod
    def model_config(case: Case, **kw: Any) -> ModelConfig:
        """ModelConfig of a case: method/backend/params from it, kv heads and grid from its shape."""
        entry = METHODS.get(case.method)
        params = entry.spec.params(case.param_dict)
        w = entry.spec.shape(case.workload, params)
        return ModelConfig(method=case.method, backend=case.backend, params=params, kv_heads=w.heads_kv,
                           n_heads=w.heads_q, d_model=w.d_model, causal=w.causal, spatial=w.spatial, **kw)
