"""Registry behaviour on fresh instances, and the loaded registry's invariants."""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from attnbench.registry import (
    METHODS,
    SUITES,
    MethodEntry,
    Registry,
    UnknownNameError,
    register_backend,
    register_method,
)
from attnbench.spec import AttentionSpec, Backend, Paper, Workload
from attnbench.suite import Suite


def _spec(name: str = "toy") -> AttentionSpec:
    return AttentionSpec(name=name, title="Toy", paper=Paper("Toy", 2024, "0000.00000"), family="dense",
                         defaults={"window": 4})


def test_duplicate_method_raises() -> None:
    reg: Registry = Registry("method")
    spec = _spec()
    register_method(spec, registry=reg)(lambda q, k, v, *, causal=False: q)
    with pytest.raises(ValueError, match="duplicate"):
        register_method(_spec(), registry=reg)(lambda q, k, v, *, causal=False: q)


def test_duplicate_backend_raises() -> None:
    reg: Registry = Registry("method")
    spec = _spec()
    register_method(spec, registry=reg)(lambda q, k, v, *, causal=False: q)
    register_backend(spec, Backend.SDPA, registry=reg)(lambda q, k, v, *, causal=False: q)
    with pytest.raises(ValueError, match="duplicate backend"):
        register_backend(spec, Backend.SDPA, registry=reg)(lambda q, k, v, *, causal=False: q)


def test_unknown_name_suggests_close_matches() -> None:
    reg: Registry = Registry("method")
    reg.register("sliding_window", object())
    with pytest.raises(UnknownNameError, match="did you mean sliding_window"):
        reg.get("sliding_windwo")


def test_frozen_registry_refuses() -> None:
    reg: Registry = Registry("suite")
    reg.freeze()
    with pytest.raises(RuntimeError, match="frozen"):
        reg.register("x", 1)


def test_iterates_sorted() -> None:
    reg: Registry = Registry("suite")
    for name in ("b", "c", "a"):
        reg.register(name, name)
    assert list(reg) == ["a", "b", "c"]


def test_unknown_param_raises() -> None:
    with pytest.raises(ValueError, match="unknown parameter 'windw'"):
        _spec().params({"windw": 3})


def test_unknown_backend_lists_valid() -> None:
    with pytest.raises(ValueError, match="valid: reference"):
        Backend.parse("cuda_magic")


def test_loaded_registries_are_frozen_and_populated() -> None:
    assert METHODS.frozen and SUITES.frozen
    assert {"mha"} <= set(METHODS.names())
    assert {"correctness", "latency", "memory", "flops", "scaling"} <= set(SUITES.names())


IN_TREE_PREFIX = "attnbench.impls."  # an in-tree reference lives in impls/<name>.py; anything else is a plugin
# call context, and learned tensors a layer form passes in (DMA's `dt_weight`), not hyper-parameters
IGNORED_KWARGS = frozenset({"causal", "spatial", "backend", "rope", "dt_weight"})
SNAKE_CASE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")


def is_in_tree(entry: MethodEntry) -> bool:
    """In-tree methods register their reference from `attnbench.impls.<name>`; entry-point plugins do not."""
    return entry.reference.fn.__module__.startswith(IN_TREE_PREFIX)


def naming_problems(entry: MethodEntry) -> list[str]:
    """Registry rules on a method's name, paper and reference: in-tree by file stem, plugins by snake_case."""
    name, spec, ref = entry.name, entry.spec, entry.reference.fn
    out = []
    if is_in_tree(entry):
        stem = Path(inspect.getsourcefile(ref) or "").stem
        if stem != name or ref.__module__ != f"{IN_TREE_PREFIX}{name}":
            out.append(f"{name}: in-tree reference must be in impls/{name}.py, is {ref.__module__} ({stem}.py)")
        if len(entry.backends) < 2:
            out.append(f"{name}: in-tree method has only a reference (add kernels/{name}.py or a mask_mod)")
    elif not SNAKE_CASE.fullmatch(name):
        out.append(f"{name!r}: plugin method names must be snake_case")
    if not (spec.paper.title and spec.paper.year > 1900):
        out.append(f"{name}: spec.paper needs a title and a year")
    if spec.kind not in ("functional", "layer"):
        out.append(f"{name}: kind must be 'functional' or 'layer', not {spec.kind!r}")
    return out


def _canon(x: Any) -> Any:
    """A default as the harness records it (params travel as JSON: tuples are lists, mappings dicts)."""
    if isinstance(x, Mapping):
        return {k: _canon(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_canon(v) for v in x]
    return x


def default_problems(entry: MethodEntry) -> list[str]:
    """Where a method states a default other than `SPEC.defaults` (the one list of its hyper-parameters).

    Checks the reference (functional fn, or a layer's `build`) and, for functional methods, every fused
    function, which takes the same keyword params (a layer's fused entries are attention steps with their
    own arguments). Private `_name` params of a fused function (e.g. a bound `_compiled`) are its own.
    """
    spec = entry.spec
    fns = [(Backend.REFERENCE, entry.reference.fn)]
    if spec.kind == "functional":
        fns += [(b, impl.fn) for b, impl in entry.impls.items() if b != Backend.REFERENCE]
    out = []
    for backend, fn in fns:
        where = f"{entry.name}/{backend.value} ({fn.__module__}.{fn.__qualname__})"
        params = inspect.signature(fn).parameters.values()
        for p in params:
            if (p.kind not in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) or p.default is p.empty
                    or p.name in IGNORED_KWARGS or (backend != Backend.REFERENCE and p.name.startswith("_"))):
                continue
            if p.name not in spec.defaults:
                out.append(f"{where}: {p.name}={p.default!r} has a default but is not in SPEC.defaults")
                continue
            want, have = _canon(spec.defaults[p.name]), _canon(p.default)
            if have != want or type(have) is not type(want):
                out.append(f"{where}: {p.name}={p.default!r}, SPEC.defaults says {spec.defaults[p.name]!r}")
        if backend == Backend.REFERENCE and not any(p.kind == p.VAR_KEYWORD for p in params):
            names = {p.name for p in params}
            out += [f"{where}: SPEC.defaults lists {k!r}, which it does not take" for k in spec.defaults
                    if k not in names]
    return out


def registry_problems(names: list[str] | None = None) -> list[str]:
    """Every registry rule above, for `names` (default: all methods). Callable from a plugin's own tests."""
    entries = [METHODS.get(n) for n in names] if names else list(METHODS)
    return [msg for e in entries for msg in naming_problems(e) + default_problems(e)]


@pytest.mark.parametrize("name", METHODS.names())
def test_method_name_is_file_stem_and_has_paper(name: str) -> None:
    """In tree: name == file stem under impls/ and a fused backend; plugin: snake_case. Both: paper, kind."""
    assert not naming_problems(METHODS.get(name))


@pytest.mark.parametrize("name", METHODS.names())
def test_defaults_are_stated_once(name: str) -> None:
    """The reference's (and fused functions') keyword defaults are exactly SPEC.defaults."""
    problems = default_problems(METHODS.get(name))
    assert not problems, "\n".join(problems)


def test_registry_rules_catch_disagreements() -> None:
    """The checks themselves, on a fresh registry: a plugin may lack a fused backend, not agreeing defaults."""
    reg: Registry = Registry("method")
    spec = _spec()
    register_method(spec, registry=reg)(lambda q, k, v, *, causal=False, window=4: q)
    assert not naming_problems(reg.get("toy")) and not default_problems(reg.get("toy"))
    register_backend(spec, Backend.SDPA, registry=reg)(lambda q, k, v, *, causal=False, window=8, extra=1: q)
    problems = default_problems(reg.get("toy"))
    assert len(problems) == 2 and "window=8" in problems[0] and "extra=1" in problems[1]
    bad = AttentionSpec(name="Toy-2", title="", paper=Paper("", 0), family="dense", defaults={"window": 4})
    register_method(bad, registry=reg)(lambda q, k, v, *, causal=False: q)
    problems = naming_problems(reg.get("Toy-2")) + default_problems(reg.get("Toy-2"))
    assert ["snake_case" in problems[0], "paper" in problems[1], "does not take" in problems[2]] == [True] * 3


@pytest.mark.parametrize("name", SUITES.names())
def test_suites_satisfy_protocol(name: str) -> None:
    suite = SUITES.get(name)
    assert isinstance(suite, Suite)
    assert suite.name == name and suite.version >= 1


def test_workload_validation_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        Workload(heads_q=5, heads_kv=2)
    with pytest.raises(ValueError, match="unknown dtype"):
        Workload(dtype="float8")
