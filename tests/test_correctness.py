"""Registry-driven: every method × fused backend agrees with its reference (fwd, and grads where supported).

Adding a method adds its cases here with no edit. Runs the correctness suite's own comparison, so
the harness's tolerance logic is what is tested.
"""

from __future__ import annotations

import pytest

from attnbench.registry import METHODS, SUITES, MethodEntry
from attnbench.spec import Backend, Workload, params_json
from attnbench.suite import Case, ResolvedCase

WORKLOADS = [  # small; one N that is not a multiple of 64 (padding paths), grouped kv both ways
    Workload(batch=2, heads_q=2, heads_kv=2, seq_q=64, seq_kv=64, head_dim=16, causal=False),
    Workload(batch=2, heads_q=2, heads_kv=2, seq_q=64, seq_kv=64, head_dim=16, causal=True),
    Workload(batch=1, heads_q=4, heads_kv=2, seq_q=80, seq_kv=80, head_dim=16, causal=True),
    Workload(batch=1, heads_q=4, heads_kv=2, seq_q=64, seq_kv=64, head_dim=16, causal=False),
]


def _cells() -> list[pytest.param]:
    out = []
    for entry in METHODS:
        for backend in entry.backends:
            if backend == Backend.REFERENCE:
                continue
            for w in WORKLOADS:
                out.append(pytest.param(entry.name, backend, w, id=f"{entry.name}-{backend.value}-{w.id}"))
    return out


@pytest.mark.parametrize(("method", "backend", "workload"), _cells())
def test_fused_matches_reference(method: str, backend: Backend, workload: Workload) -> None:
    entry = METHODS.get(method)
    params = entry.spec.params()
    shaped = entry.spec.shape(workload, params)
    why = entry.why_not(backend, shaped, params)
    if why:
        pytest.skip(why)
    case = Case("correctness", method, backend.value, workload, params_json({}))
    rows = SUITES.get("correctness").run(ResolvedCase.resolve(case, METHODS))
    bad = [r for r in rows if r.status != "ok"]
    assert not bad, bad[0].error
    assert any(r.metric == "max_abs_err" for r in rows)


def _in_tree(entry: MethodEntry) -> bool:
    """In-tree methods register their reference from `attnbench.impls.<name>`; entry-point plugins do not."""
    return entry.reference.fn.__module__.startswith("attnbench.impls.")


def test_every_method_has_a_fused_backend() -> None:
    """In-tree methods ship one (kernels/<name>.py or a flex mask_mod); for a plugin it is optional."""
    lonely = [e.name for e in METHODS if _in_tree(e) and len(e.backends) < 2]
    assert not lonely, f"in-tree methods with only a reference: {lonely}"


def test_every_method_is_checked_somewhere() -> None:
    """At least one workload above must be runnable for each method/backend pair (else the test is empty)."""
    from attnbench.device import backend_unavailable

    unchecked = []
    for entry in METHODS:
        params = entry.spec.params()
        for backend in entry.backends:
            if backend == Backend.REFERENCE or backend_unavailable(backend, "cpu"):  # a GPU/peer backend
                continue
            if all(entry.why_not(backend, entry.spec.shape(w, params), params) for w in WORKLOADS):
                unchecked.append(f"{entry.name}/{backend.value}")
    assert not unchecked, f"no test workload runs: {unchecked}"
