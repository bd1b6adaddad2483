"""A/B on one machine: run a base commit (as a git worktree) and the working tree interleaved, then compare."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from rich.console import Console

from attnbench.gate.load import GateInputError
from attnbench.gate.model import Comparison
from attnbench.gate.verdict import compare
from attnbench.metrics import DENSE_BASELINE

_RUN = "import sys; sys.argv[0] = 'attnbench'; from attnbench.cli import app; app()"


def ab_compare(
    ref: str,
    *,
    run_args: list[str],
    repo: str | os.PathLike[str] = ".",
    rounds: int = 3,
    threshold: float = 1.10,
    alpha: float = 0.05,
    baseline: str = DENSE_BASELINE,
    console: Console | None = None,
    keep: str | os.PathLike[str] | None = None,
    allow_vanished: bool = False,
) -> Comparison:
    """Run `attnbench run <run_args>` on commit `ref` and on the working tree, interleaved, then compare.

    The base commit is checked out as a git worktree and imported through PYTHONPATH, so its own
    code is measured; each round runs both sides (alternating which goes first), and the i-th
    rounds of both sides form a pair for the significance test. `keep`: a folder to copy the
    results into (`base/round<i>`, `head/round<i>`), e.g. for a CI artifact. `allow_vanished`: as
    for `compare`.

    Raises:
        GateInputError: `ref` is unknown, or a side's run fails.
    """
    if rounds < 1:
        raise GateInputError(f"rounds must be ≥ 1, got {rounds}")
    log = console or Console(stderr=True)
    repo = Path(_git(Path(repo), "rev-parse", "--show-toplevel"))
    sha = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    short = sha[:12]
    with tempfile.TemporaryDirectory(prefix="attnbench-ab-") as tmpdir:
        tmp = Path(tmpdir)
        worktree = tmp / "base-src"
        _git(repo, "worktree", "add", "--detach", str(worktree), sha)
        try:
            sides = {"base": _shim(worktree, tmp / "base-shim"), "head": _shim(repo, tmp / "head-shim")}
            _check_shim(sides["base"], worktree)
            _check_shim(sides["head"], repo)
            outs: dict[str, list[Path]] = {"base": [], "head": []}
            for r in range(rounds):
                for name in ("base", "head") if r % 2 == 0 else ("head", "base"):
                    out = tmp / name / f"round{r}"
                    log.print(
                        f"[bold]ab round {r + 1}/{rounds}[/bold]: {name} "
                        f"({short if name == 'base' else 'working tree'})",
                        highlight=False,
                    )
                    _run_side(sides[name], run_args, out)
                    outs[name].append(out)
            cmp = compare(
                outs["base"],
                outs["head"],
                threshold=threshold,
                alpha=alpha,
                baseline=baseline,
                allow_vanished=allow_vanished,
            )
            if keep is not None:
                for name in ("base", "head"):
                    shutil.copytree(tmp / name, Path(keep) / name, dirs_exist_ok=True)
        finally:
            subprocess.run(
                ["git", "-C", str(repo), "worktree", "remove", "--force", str(worktree)], capture_output=True
            )
            subprocess.run(["git", "-C", str(repo), "worktree", "prune"], capture_output=True)
    cmp.base_label, cmp.head_label = f"{ref} ({short})", "working tree"
    cmp.warnings.insert(0, f"A/B: {rounds} interleaved rounds of `attnbench run {shlex.join(run_args)}`")
    return cmp


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if out.returncode:
        raise GateInputError(f"git {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout.strip()


def _shim(src: Path, dest: Path) -> Path:
    """A folder to put on PYTHONPATH that imports `attnbench` (and its mapped subpackages) from `src`."""
    mapping = {"attnbench": "attnbench"}
    pyproject = src / "pyproject.toml"
    if pyproject.exists():
        tool = tomllib.loads(pyproject.read_text()).get("tool", {}).get("setuptools", {})
        mapping.update(tool.get("package-dir", {}))
    pkg = dest / "attnbench"
    pkg.mkdir(parents=True)
    for item in (src / mapping["attnbench"]).iterdir():
        if item.name != "__pycache__":
            (pkg / item.name).symlink_to(item.resolve())
    for name, rel in mapping.items():
        if name.startswith("attnbench.") and name.count(".") == 1:
            link = pkg / name.split(".", 1)[1]
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to((src / rel).resolve())
    return dest


def _side_env(shim: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(shim)
    env.pop("PYTHONSTARTUP", None)
    return env


def _check_shim(shim: Path, src: Path) -> None:
    probe = "import attnbench, attnbench.impls, os; print(os.path.realpath(attnbench.impls.__path__[0]))"
    out = subprocess.run([sys.executable, "-P", "-c", probe], env=_side_env(shim), capture_output=True, text=True)
    got = out.stdout.strip()
    if out.returncode or not got.startswith(str(src.resolve())):
        raise GateInputError(f"cannot import attnbench from {src} (got {got or out.stderr.strip()[-300:]})")


def _run_side(shim: Path, run_args: list[str], out: Path) -> None:
    args = list(run_args)
    if not any(re.fullmatch(r"--(no-)?report", a) for a in args):
        args.append("--no-report")
    if "--allow-failures" not in args:  # a failing case is a status row the comparison judges, not a crash
        args.append("--allow-failures")
    # -P: the current directory (often the repo itself) must not shadow the shim on sys.path
    cmd = [sys.executable, "-P", "-c", _RUN, "run", *args, "-o", str(out)]
    proc = subprocess.run(cmd, env=_side_env(shim), capture_output=True, text=True)
    if proc.returncode:
        tail = (proc.stderr or proc.stdout).strip()[-1500:]
        raise GateInputError(f"`attnbench run {shlex.join(args)}` failed (exit {proc.returncode}):\n{tail}")
