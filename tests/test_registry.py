"""Registry behaviour on fresh instances, and the loaded registry's invariants."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from attnbench.registry import METHODS, SUITES, Registry, UnknownNameError, register_backend, register_method
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


@pytest.mark.parametrize("name", METHODS.names())
def test_method_name_is_file_stem_and_has_paper(name: str) -> None:
    entry = METHODS.get(name)
    path = Path(inspect.getsourcefile(entry.reference.fn) or "")
    assert path.stem == name
    assert entry.spec.paper.title and entry.spec.paper.year > 1900
    assert entry.spec.kind in ("functional", "layer")
    assert entry.reference.fn.__module__ == f"attnbench.impls.{name}"


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
