"""The README's first command installs only the base dependencies: everything the default preset uses must
import and plan with the extras (lm, ray, test tools, peers) absent, and its image data must load."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Packages a plain `pip install -e .` does not bring: the extras, the test tools and the optional peers.
NOT_BASE = ("transformers", "lm_eval", "accelerate", "datasets", "ray", "pytest", "playwright", "natten", "triton",
            "xformers", "flash_attn", "fla", "pynvml")

PROBE = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = set(sys.argv[1].split(","))

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not a base dependency")
            return None

    sys.meta_path.insert(0, Blocker())
    import pkgutil, importlib
    import attnbench
    from attnbench.registry import METHODS, SUITES, load_plugins
    from attnbench.presets import load_preset
    from attnbench.runner import Runner
    load_plugins()
    for pkg in ("attnbench.impls", "attnbench.kernels", "attnbench.suites"):
        for mod in pkgutil.walk_packages(importlib.import_module(pkg).__path__, pkg + "."):
            if not mod.name.rsplit(".", 1)[-1].startswith("_tl_"):  # Triton kernel sources: loaded lazily, need triton
                importlib.import_module(mod.name)
    preset = load_preset("quick")
    cases = Runner(preset, __import__("pathlib").Path(sys.argv[2])).plan()
    from attnbench.proxy import data
    digits = data.digits()
    print(len(cases), len(digits.y_train), sorted(set(preset.suites)))
""")


def test_default_preset_needs_only_base_dependencies(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE, ",".join(NOT_BASE), str(tmp_path / "r")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    n_cases, n_train, suites = proc.stdout.strip().split(" ", 2)
    assert int(n_cases) > 100 and int(n_train) > 1000 and "image_cls" in suites
