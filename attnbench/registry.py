"""One generic `Registry[T]` and its two instances: METHODS and SUITES.

Nothing registers on `import attnbench`; `load_plugins()` imports impls/, kernels/, suites/ and
the `attnbench.methods` entry-point group, expands generic backends, then freezes both.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from attnbench.spec import AttentionSpec, Backend, FlopsFn, Params, Workload

T = TypeVar("T")


class UnknownNameError(KeyError):
    """An unknown registry key; the message lists close matches."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Generic[T]):
    """Name → entry map: duplicates raise, unknown names suggest close matches, can be frozen."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self.frozen = False

    def register(self, name: str, entry: T) -> T:
        if self.frozen:
            raise RuntimeError(f"{self.kind} registry is frozen; register {name!r} before load_plugins()")
        if name in self._entries:
            raise ValueError(f"duplicate {self.kind} {name!r}")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{hint} (`attnbench list` shows all)") from None

    __getitem__ = get

    def freeze(self) -> None:
        self.frozen = True

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[T]:
        return (self._entries[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._entries)


CanRun = Callable[[Workload, Params], "str | None"]


def _always(w: Workload, params: Params) -> str | None:
    return None


@dataclass(frozen=True, slots=True)
class Impl:
    """One backend of one method.

    Functional methods: `fn(q, k, v, *, causal, **params) -> o`; when `staged`, `fn` returns a
    callable `(q, k, v) -> o` and its own duration is the setup (compile/mask/routing) time.
    Layer methods: the reference `fn` is `build(d_model, n_heads, *, backend, **params)`;
    fused entries hold the attention step the module resolves with `step()`.
    `flops(w, params) -> FlopCount`: what this backend executes (its own tiles, skipped heads),
    overriding the spec's `flops` for `executed`; None = the spec's count, if it models this backend.
    """

    method: str
    backend: Backend
    fn: Callable[..., Any]
    can_run: CanRun = _always
    staged: bool = False
    flops: FlopsFn | None = None

    def prepare(self, q: Any, k: Any, v: Any, *, causal: bool, params: Params) -> Callable[..., Any]:
        """Do the setup work once; return the steady-state callable `(q, k, v) -> o`."""
        if self.staged:
            return self.fn(q, k, v, causal=causal, **params)
        fn = self.fn

        def run(q: Any, k: Any, v: Any) -> Any:
            return fn(q, k, v, causal=causal, **params)

        return run


@dataclass(slots=True)
class MethodEntry:
    spec: AttentionSpec
    impls: dict[Backend, Impl] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def reference(self) -> Impl:
        return self.impls[Backend.REFERENCE]

    @property
    def backends(self) -> list[Backend]:
        return sorted(self.impls, key=lambda b: list(Backend).index(b))

    def impl(self, backend: Backend | str) -> Impl:
        b = Backend.parse(backend) if isinstance(backend, str) else backend
        if b not in self.impls:
            have = ", ".join(self.backends)
            raise UnknownNameError(f"method {self.name!r} has no backend {b.value!r}; it has: {have}")
        return self.impls[b]

    def why_not(self, backend: Backend, w: Workload, params: Params) -> str | None:
        """Reason this method/backend cannot run `w`, or None (method first, then backend)."""
        return self.spec.why_not(w, params) or self.impl(backend).can_run(w, params)


@dataclass(frozen=True, slots=True)
class GenericBackend:
    """A backend that covers every method whose spec `applies` (e.g. flex via `spec.mask_mod`)."""

    backend: Backend
    applies: Callable[[AttentionSpec], bool]
    make: Callable[[AttentionSpec], Impl]


METHODS: Registry[MethodEntry] = Registry("method")
SUITES: Registry[Any] = Registry("suite")
GENERIC_BACKENDS: list[GenericBackend] = []


def register_method(spec: AttentionSpec, registry: Registry[MethodEntry] | None = None):
    """Decorator: register `fn` as the reference implementation of `spec`."""
    reg = METHODS if registry is None else registry

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        stem = fn.__module__.rsplit(".", 1)[-1]
        if fn.__module__.startswith("attnbench.impls.") and stem != spec.name:
            raise ValueError(f"method name {spec.name!r} must equal its file stem {stem!r}")
        entry = reg._entries.get(spec.name) or reg.register(spec.name, MethodEntry(spec))
        if entry.spec is not spec:
            raise ValueError(f"duplicate method {spec.name!r}")
        _add_impl(entry, Impl(spec.name, Backend.REFERENCE, fn))
        return fn

    return deco


def register_backend(spec: AttentionSpec, backend: Backend, *, can_run: CanRun = _always,
                     staged: bool = False, flops: FlopsFn | None = None,
                     registry: Registry[MethodEntry] | None = None):
    """Decorator: register `fn` as the `backend` implementation of `spec`."""
    reg = METHODS if registry is None else registry

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        entry = reg._entries.get(spec.name) or reg.register(spec.name, MethodEntry(spec))
        _add_impl(entry, Impl(spec.name, backend, fn, can_run, staged, flops))
        return fn

    return deco


def register_generic_backend(backend: Backend, applies: Callable[[AttentionSpec], bool],
                             make: Callable[[AttentionSpec], Impl]) -> None:
    GENERIC_BACKENDS.append(GenericBackend(backend, applies, make))


def register_suite(cls: type[T]) -> type[T]:
    """Class decorator: register one instance of a suite class under its `name`."""
    SUITES.register(cls.name, cls())  # type: ignore[attr-defined]
    return cls


def _add_impl(entry: MethodEntry, impl: Impl) -> None:
    if impl.backend in entry.impls:
        raise ValueError(f"duplicate backend {impl.backend.value!r} for method {entry.name!r}")
    entry.impls[impl.backend] = impl


def step(spec: AttentionSpec, backend: Backend | str) -> Callable[..., Any]:
    """The attention step a layer method runs under `backend` (resolved through METHODS)."""
    return METHODS.get(spec.name).impl(backend).fn


_PLUGIN_PACKAGES = ("attnbench.impls", "attnbench.kernels", "attnbench.suites")


def load_plugins() -> None:
    """Import every method, kernel and suite module once, expand generic backends, freeze."""
    if METHODS.frozen:
        return
    for pkg_name in _PLUGIN_PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for mod in pkgutil.iter_modules(pkg.__path__):
            if not mod.name.startswith("_"):
                importlib.import_module(f"{pkg_name}.{mod.name}")
    for ep in entry_points(group="attnbench.methods"):
        ep.load()
    for entry in METHODS:
        if Backend.REFERENCE not in entry.impls:
            raise ValueError(f"method {entry.name!r} has backends but no reference implementation")
        for gen in GENERIC_BACKENDS:
            if gen.backend not in entry.impls and gen.applies(entry.spec):
                entry.impls[gen.backend] = gen.make(entry.spec)
    METHODS.freeze()
    SUITES.freeze()
