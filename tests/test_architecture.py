"""The layout's rules, checked by walking the source: core never imports a plugin folder, reports and
the gate never import each other, and no module grows past ~400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "attnbench"
PLUGIN_PACKAGES = ("attnbench.impls", "attnbench.kernels", "attnbench.suites")
FOLDERS = ("attnbench", "impls", "kernels", "suites", "reports")
MAX_LINES = 420  # "about 400": a module past this is doing more than one job


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, `from a import b` also giving `a.b`."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def offending(folder: Path, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sorted(folder.rglob("*.py")):
        for line, mod in imported_modules(path):
            if any(mod == f or mod.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod}")
    return bad


def test_core_never_imports_a_plugin_folder() -> None:
    assert offending(CORE, PLUGIN_PACKAGES) == []


def test_reports_and_gate_never_import_each_other() -> None:
    assert offending(ROOT / "reports", ("attnbench.gate",)) == []
    assert offending(CORE / "gate", ("attnbench.reports",)) == []


def test_the_walk_sees_imports() -> None:
    probe = ROOT / "suites" / "latency.py"
    mods = {m for _, m in imported_modules(probe)}
    assert "attnbench.kernelsuite" in mods and "attnbench.metrics.lower" in mods


@pytest.mark.parametrize("folder", FOLDERS)
def test_no_module_over_about_400_lines(folder: str) -> None:
    long = {str(p.relative_to(ROOT)): n for p in sorted((ROOT / folder).rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
