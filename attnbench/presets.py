"""Presets: TOML files in suites/presets/, overridable from the command line.

Layout of a preset file:
    suites, methods, backends, exclude   top-level lists (fnmatch patterns; "*" = all)
    [shapes]                             defaults for every kernel suite (seq_lens, dtypes, ...)
    [timing]                             min_time_s, max_reps, warmup_s, cuda_graphs
    [suite.<name>]                       per-suite keys; they override [shapes]/[timing]
"""

from __future__ import annotations

import copy
import fnmatch
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

PRESET_NAMES = ("smoke", "quick", "full", "gpu")
_BARE_WORD = re.compile(r"[A-Za-z_/.~][A-Za-z0-9_./~+-]*")  # a word or a path: a string when not TOML


class PresetError(ValueError):
    """A preset that cannot be loaded or an override that cannot be applied."""


@dataclass(frozen=True)
class Preset:
    name: str
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def suites(self) -> list[str]:
        return list(self.data.get("suites", []))

    @property
    def device(self) -> str:
        """The device cases run on; the runner resolves "auto" before asking suites for cases."""
        return str(self.data.get("device", "auto"))

    def with_device(self, device: str) -> Preset:
        return Preset(self.name, {**self.data, "device": device})

    def section(self, suite: str) -> dict[str, Any]:
        """Settings for one suite: [shapes] and [timing], overridden by [suite.<name>]."""
        out: dict[str, Any] = {}
        out.update(self.data.get("shapes", {}))
        out.update(self.data.get("timing", {}))
        out.update(self.data.get("suite", {}).get(suite, {}))
        return out

    def own_section(self, suite: str) -> dict[str, Any]:
        """Only `[suite.<name>]` (for suites whose settings share nothing with [shapes]/[timing])."""
        return dict(self.data.get("suite", {}).get(suite, {}))

    def selects(self, method: str, backend: str, suite: str | None = None) -> bool:
        """Does the preset's method/backend selection (and exclude list) take this pair?

        A backend this machine cannot run at all (a CUDA-only kernel on a CPU run, a peer library
        that is not installed) is taken only when named outright (`--backends sdpa_flash`), then
        recorded `unsupported` with its reason; a wildcard passes over it (`attnbench list` says why).
        """
        sec = self.section(suite) if suite else {}
        methods = sec.get("methods", self.data.get("methods", ["*"]))
        backends = sec.get("backends", self.data.get("backends", ["*"]))
        excluded = list(self.data.get("exclude", [])) + list(sec.get("exclude", []))
        pair = f"{method}/{backend}"
        if backend not in backends and self.device != "auto":
            from attnbench.device import backend_unavailable  # imports torch: not at `--help`

            if backend_unavailable(backend, self.device):
                return False
        return (any(fnmatch.fnmatchcase(method, p) for p in methods)
                and any(fnmatch.fnmatchcase(backend, p) for p in backends)
                and not any(fnmatch.fnmatchcase(pair, p) or fnmatch.fnmatchcase(method, p)
                            for p in excluded))


def load_preset(name_or_path: str, overrides: Iterable[str] = ()) -> Preset:
    """Load a preset by name (built-in) or path, then apply `key.path=value` overrides (TOML values)."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.exists():
        text, name = path.read_text(), path.stem
    else:
        res = resources.files("attnbench.suites") / "presets" / f"{name_or_path}.toml"
        if not res.is_file():
            raise PresetError(f"unknown preset {name_or_path!r}; built-in: {', '.join(PRESET_NAMES)} "
                              f"(or a path to a .toml file)")
        text, name = res.read_text(), name_or_path
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PresetError(f"preset {name_or_path!r} is not valid TOML: {exc}") from None
    for item in overrides:
        apply_override(data, item)
    return Preset(name, data)


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in `data`; the value is parsed as TOML. A value that is not TOML is taken as a
    string only when it is one plain word (`name`, `a.b/c-d`); anything else (`[32`, `1.2.3`, `a b`) is an
    error naming the key, so a typo never silently becomes a string."""
    if "=" not in item:
        raise PresetError(f"override {item!r} is not of the form key.path=value")
    key, raw = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError as exc:
        if not _BARE_WORD.fullmatch(raw.strip()):
            raise PresetError(f"override {key.strip()}: {raw!r} is not a TOML value ({exc}); "
                              f"quote strings, e.g. {key.strip()}='\"text\"'") from None
        value = raw.strip()
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise PresetError(f"override {item!r}: {part!r} is not a table")
    node[parts[-1]] = copy.deepcopy(value)
