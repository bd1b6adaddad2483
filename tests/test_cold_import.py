"""Importing attnbench registers nothing, and the reference path works without triton."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
class NoTriton:
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ImportError("triton blocked for this test")
sys.meta_path.insert(0, NoTriton())
import attnbench, attnbench.registry as r
assert len(r.METHODS) == 0 and len(r.SUITES) == 0, "import alone must register nothing"
r.load_plugins()
import torch
from attnbench.spec import Workload
from attnbench.inputs import make_qkv
w = Workload(seq_q=16, seq_kv=16, head_dim=8, heads_q=2)
for e in r.METHODS:
    if e.spec.kind == "functional":
        params = e.spec.params()
        ws = e.spec.shape(w, params)
        if e.spec.why_not(ws, params) is None:
            q, k, v = make_qkv(ws)
            from attnbench.spec import run_params
            e.reference.prepare(q, k, v, causal=False, params=run_params(ws, params))(q, k, v)
print("ok", len(r.METHODS))
"""


def test_cold_import_without_triton() -> None:
    res = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.startswith("ok")


def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    """Import-order cycles only show when a module is the first one imported (as the CLI does)."""
    import pkgutil

    import attnbench

    names = [f"attnbench.{m.name}" for m in pkgutil.iter_modules(attnbench.__path__) if m.name != "__main__"]
    names += ["attnbench.reports", "attnbench.reports.site", "attnbench.reports.markdown"]
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n"
    for name in names:
        res = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, f"{name}: {res.stderr[-1500:]}"
