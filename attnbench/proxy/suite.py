"""The base of the accuracy-proxy suites: validated settings per preset tier, cases, applicability, head fitting."""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Generic, Literal, TypeVar

from attnbench import density
from attnbench.metrics import MetricSpec, info
from attnbench.presets import Preset
from attnbench.proxy.train import ModelConfig
from attnbench.registry import MethodEntry, Registry
from attnbench.settings import as_dict, resolve, settings
from attnbench.spec import Backend, Workload, params_json
from attnbench.suite import Case, ResolvedCase, Row

SELECTION = ("methods", "backends", "exclude", "params", "seeds", "variants", "densities")  # never in options
PAPER = "paper"  # a ladder point: the method's own (paper) defaults, kept only where they are sparse
DENSE_AT = 0.95  # a sparse method attending at least this fraction of the pairs is dense at that length
LADDER = (0.125, 0.25, 0.5, PAPER)  # the quick/full tiers' ladder (smoke: 0.25 and the paper default)
# what the sparse references attended during a proxy's final evaluation (attnbench.density.measure)
EFFECTIVE_DENSITY = info("effective_density", "ratio", label="effective density")


@settings
class ProxySettings:
    """The selection keys every proxy section takes; suites subclass it with their own fields.

    `methods`/`exclude` are read by `Preset.selects` (None = the preset's top-level selection),
    `params` holds per-method overrides (`params.<method>`), `seeds` one case each.
    `densities` is the density ladder: every method whose spec has `at_density` gets one case per
    point, its params resolved at the task's length to attend that fraction of the allowed
    (causal) pairs; `"paper"` is the method's own defaults, kept only where they are sparse at that
    length (< DENSE_AT); `()` turns the ladder off (one case at the defaults)."""

    methods: tuple[str, ...] | None = None
    backends: tuple[Backend, ...] = (Backend.REFERENCE,)
    exclude: tuple[str, ...] = ()
    params: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    densities: tuple[float | Literal["paper"], ...] = (0.25, PAPER)

    def __post_init__(self) -> None:
        bad = [d for d in self.densities if d != PAPER and not 0.0 < float(d) <= 1.0]
        if bad:
            raise ValueError(f"densities must lie in (0, 1] or be {PAPER!r}, got {bad}")


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


def _short(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items())) or "defaults"


def density_ladder(entry: MethodEntry, w: Workload, overrides: Mapping[str, Any],
                   densities: Iterable[float | str]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """[(param overrides, options)] of one method on one task: a point per ladder density.

    Generic over methods: `spec.at_density(shaped w, target, params)` resolves each target; a
    `"paper"` point keeps the defaults and is left out where they attend ≥ DENSE_AT of the pairs at
    this length (measured by `density.probe` on a seeded random input), the reason in
    `density_note`. Preset overrides (`params.<method>`) win: ladder keys they set collapse the ladder
    to one case with those params. Methods without `at_density` get `[(overrides, {})]`."""
    spec, densities = entry.spec, list(densities)
    if spec.at_density is None or not densities:
        return [(dict(overrides), {})]
    base = spec.params(overrides)
    shaped = spec.shape(w, base)
    points: list[tuple[dict[str, Any], dict[str, Any]]] = []
    notes: list[str] = []
    for target in densities:
        if target == PAPER:
            try:
                d = density.probe(entry, w, base)
            except Exception as exc:  # noqa: BLE001 — the runner records why the defaults cannot run
                points.append((dict(overrides), {"target_density": PAPER, "paper_density_note": str(exc)}))
                continue
            if d is not None and d >= DENSE_AT:
                notes.append(f"paper default ({_short(spec.defaults)}) attends {d:.2f} of the pairs at "
                             f"L={w.seq_q}: dense at this length, left out of the ladder")
                continue
            points.append((dict(overrides), {"target_density": PAPER, "paper_density": d}))
            continue
        try:
            resolved = spec.at_density(shaped, float(target), base)
        except ValueError as exc:  # no setting of this method fits the task (e.g. a grid too small)
            notes.append(f"target {target:g}: {exc}")
            continue
        if set(resolved) & set(overrides):
            return [(dict(overrides), {"target_density": None,
                                       "density_note": f"{_short(overrides)} set explicitly: no density ladder"})]
        merged = {**resolved, **overrides}
        if any(p == merged for p, _ in points):
            notes.append(f"target {target:g} resolves to the same params as an earlier point at L={w.seq_q}")
            continue
        points.append((merged, {"target_density": float(target)}))
    if not points:  # every point left out: run the defaults anyway, so the (greyed) row says why
        points = [(dict(overrides), {"target_density": PAPER})]
    if notes:
        points = [(p, {**o, "density_note": "; ".join(notes)}) for p, o in points]
    return points


def density_row(meter: density.DensityMeter) -> list[Row]:
    """`effective_density` of what the meter saw (none for a method that records nothing: dense)."""
    return [] if meter.value is None else [Row("effective_density", meter.value, "ratio", n=int(meter.allowed))]


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
    `tasks(settings, entry, device)` → [(Workload, options)] and `run(rc)`. `cases` expands each
    task of a method with `at_density` over the density ladder (`density_ladder`); `run` should
    wrap its final evaluation in `attnbench.density.measure()` and add `density_row(meter)`
    (declared by `EFFECTIVE_DENSITY`).
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
                ladder = () if self.applies_to(entry, backend) else s.densities  # no ladder for a skipped case
                for w0, opts0 in self.tasks(s, entry, device):
                    for point, extra in density_ladder(entry, w0, overrides, ladder):
                        w, opts = fit_heads(entry, backend, w0, entry.spec.params(point), {**opts0, **extra})
                        params = params_json(point)
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
