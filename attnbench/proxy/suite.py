"""The base of the accuracy-proxy suites: validated settings per preset tier, cases, applicability, head fitting."""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Generic, TypeVar

from attnbench.metrics import MetricSpec
from attnbench.presets import Preset
from attnbench.proxy.train import ModelConfig
from attnbench.registry import MethodEntry, Registry
from attnbench.settings import as_dict, resolve, settings
from attnbench.spec import Backend, Workload, params_json
from attnbench.suite import Case, ResolvedCase

SELECTION = ("methods", "backends", "exclude", "params", "seeds", "variants")  # never part of a case's options


@settings
class ProxySettings:
    """The selection keys every proxy section takes; suites subclass it with their own fields.

    `methods`/`exclude` are read by `Preset.selects` (None = the preset's top-level selection),
    `params` holds per-method overrides (`params.<method>`), `seeds` one case each."""

    methods: tuple[str, ...] | None = None
    backends: tuple[Backend, ...] = (Backend.REFERENCE,)
    exclude: tuple[str, ...] = ()
    params: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)


S = TypeVar("S", bound=ProxySettings)


# -- shared suite plumbing ---------------------------------------------------------------------
def expand_variants(s: S, where: str) -> list[S]:
    """The settings once per entry of their `variants` (overrides validated like the section; none = once)."""
    variants: Iterable[Mapping[str, Any]] = getattr(s, "variants", ()) or ({},)
    return [resolve(type(s), v, where=f"{where}.variants[{i}]", tiers={"": s}, tier="")
            for i, v in enumerate(variants)]


def options(s: ProxySettings, keys: Iterable[str] | None = None) -> dict[str, Any]:
    """Plain-JSON options of a case: the settings `keys` (default: every non-selection key)."""
    d = as_dict(s)
    return {k: d[k] for k in keys} if keys is not None else {k: v for k, v in d.items() if k not in SELECTION}


def method_params(params: Mapping[str, Mapping[str, Any]], entry: MethodEntry) -> dict[str, Any]:
    """Preset overrides `params.<method>` for one method, validated against its defaults."""
    overrides = dict(params.get(entry.name, {}))
    entry.spec.params(overrides)  # unknown keys raise before anything runs
    return overrides


def accepts_spatial(entry: MethodEntry) -> bool:
    """Does the method's reference take a `spatial` grid (2-D methods)?"""
    return "spatial" in inspect.signature(entry.reference.fn).parameters


def fit_heads(entry: MethodEntry, backend: Backend, w: Workload, params: Mapping[str, Any],
              opts: dict[str, Any]) -> tuple[Workload, dict[str, Any]]:
    """The task's workload with the fewest extra heads (model width kept) the method can run.

    Proxies fix the model width; a grouped method (e.g. gqa's 4 query heads per kv head) cannot
    run a 1-head MQAR model. Such a method gets the smallest head count ≥ the task's, dividing
    the width into even head widths (RoPE needs them), that its checks accept; `heads_note` in
    the options says so. Otherwise `w` is returned unchanged and the runner records the method's
    own reason.
    """
    first = entry.why_not(backend, entry.spec.shape(w, params), params)
    if first is None:
        return w, opts
    d = w.d_model
    for h in range(w.heads_q + 1, d + 1):
        if d % h or (d // h) % 2:
            continue
        trial = w.replace(heads_q=h, heads_kv=h, head_dim=d // h)
        if entry.why_not(backend, entry.spec.shape(trial, params), params) is None:
            note = f"{entry.name} cannot run {w.heads_q} head(s) ({first}); trained with {h}"
            return trial, {**opts, "heads_note": note}
    return w, opts


def why_not_at(rc: ResolvedCase, seq_len: int) -> str | None:
    """Why the case's method cannot run sequences of `seq_len` tokens (e.g. a kernel longer than a
    short eval prompt), or None; evaluation skips such lengths instead of failing."""
    w = rc.spec.shape(rc.case.workload.replace(seq_q=seq_len, seq_kv=seq_len), rc.params)
    return rc.entry.why_not(rc.backend, w, rc.params)


def model_config(rc: ResolvedCase, **kw: Any) -> ModelConfig:
    """ModelConfig of a case: method/backend/params from it, kv heads and grid from its shaped workload."""
    w = rc.workload
    return ModelConfig(method=rc.method, backend=rc.backend, params=rc.params, kv_heads=w.heads_kv,
                       n_heads=w.heads_q, d_model=w.d_model, causal=w.causal, spatial=w.spatial, **kw)


class ProxySuite(Generic[S]):
    """Base of the proxy suites: settings per preset tier, cases, applicability.

    Subclasses set `name`, `version`, `metrics`, `Settings` (a `@settings` subclass of ProxySettings),
    `tiers` ({"smoke"|"quick"|"full": Settings}), `causal`, and implement
    `tasks(settings, entry, device)` → [(Workload, options)] and `run(rc)`.
    """

    name = ""
    version = 1
    kind = "proxy"
    metrics: tuple[MetricSpec, ...] = ()
    causal = True  # the task is next-token / causal
    takes_grid = False  # 2-D-only methods apply (image patches)
    Settings: ClassVar[type[Any]] = ProxySettings
    tiers: ClassVar[dict[str, Any]] = {}

    def settings(self, preset: Preset) -> S:
        """The preset's tier of `Settings` with `[suite.<name>]` applied (SettingsError on unknown keys).

        Of the shared `[shapes]` keys only `params` applies (`--param` writes `shapes.params`); a
        suite's own `params` replaces it, as in `Preset.section`."""
        section = preset.own_section(self.name)
        shared = preset.section(self.name)
        if "params" in shared:
            section["params"] = shared["params"]
        return resolve(self.Settings, section, where=f"suite.{self.name}", tiers=self.tiers, tier=preset.name)

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

    def tasks(self, s: S, entry: MethodEntry, device: str) -> list[tuple[Workload, dict[str, Any]]]:
        raise NotImplementedError

    def cases(self, preset: Preset, methods: Registry[MethodEntry]) -> list[Case]:
        s = self.settings(preset)
        device = preset.device if preset.device not in ("", "auto") else "cpu"
        out = []
        for entry in methods:
            for backend in self.backends(preset, s):
                if backend not in entry.impls or not preset.selects(entry.name, backend, self.name):
                    continue
                overrides = method_params(s.params, entry)
                params = params_json(overrides)
                for w, opts in self.tasks(s, entry, device):
                    w, opts = fit_heads(entry, backend, w, entry.spec.params(overrides), opts)
                    for seed in s.seeds:
                        out.append(Case(self.name, entry.name, backend, w, params, int(seed), preset.name,
                                        self.version, json.dumps(opts, sort_keys=True)))
        return out

    def backends(self, preset: Preset, s: S) -> list[Backend]:
        """Backends to train with: the suite section's `backends`, else an explicit (wildcard-free)
        top-level selection such as `--backends sdpa`, else the tier default (`reference`)."""
        if "backends" in preset.own_section(self.name):
            return list(s.backends)
        top = list(preset.data.get("backends", ["*"]))
        if any(ch in p for p in top for ch in "*?["):
            return list(s.backends)
        return [Backend(b) for b in top]
