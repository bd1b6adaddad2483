"""One configuration system for every suite: a frozen, validated settings dataclass per suite.

A suite declares `Settings` (a `@settings` class: a frozen pydantic dataclass that refuses unknown
fields) and, where budgets differ by preset, named `tiers` (`{"smoke": Settings(...), ...}`).
`resolve` takes the preset's tier (or the class defaults) and applies the preset section's keys;
an unknown key or a value of the wrong type is a `SettingsError` naming the valid keys, raised
while the run is planned, before anything runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

import pydantic

from attnbench.presets import PresetError

# bounded field types shared by every suite's settings (a bad value is refused before anything runs)
Positive = Annotated[int, pydantic.Field(ge=1)]
Seconds = Annotated[float, pydantic.Field(ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, pydantic.Field(ge=0, le=1)]

T = TypeVar("T")
_CONFIG = pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=False)


class SettingsError(PresetError):
    """Settings a suite cannot take (unknown key, wrong type, impossible value)."""


def settings(cls: type[T]) -> type[T]:
    """Class decorator: a frozen dataclass whose fields are validated (types coerced where lossless)."""
    return pydantic.dataclasses.dataclass(frozen=True, config=_CONFIG)(cls)  # type: ignore[return-value]


def field_names(cls: type[Any]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def resolve(cls: type[T], section: Mapping[str, Any], *, where: str, tiers: Mapping[str, T] | None = None,
            tier: str = "", ignore: tuple[str, ...] = ()) -> T:
    """Settings of `cls`: `tiers[tier]` (or the class defaults) overridden by `section`.

    Args:
        section: the preset's keys for this suite (keys in `ignore` are skipped).
        where: what the section is, for messages (e.g. "suite.mqar").
        tiers: named budgets; `tier` picks one (unknown tier names fall back to "quick", then defaults).
    Raises:
        SettingsError: an unknown key (the message lists the valid ones) or an invalid value.
    """
    valid = field_names(cls)
    given = {k: v for k, v in section.items() if k not in ignore}
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise SettingsError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                            f"valid: {', '.join(sorted(valid))}")
    base = pick_tier(tiers, tier) if tiers else None
    try:
        return dataclasses.replace(base, **given) if base is not None else cls(**given)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ()) if isinstance(x, int) or x in valid)
        msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        if not loc:  # a check across fields (model validator): its message names the values itself
            raise SettingsError(f"{where}: {msg}") from None
        raise SettingsError(f"{where}.{loc}: {msg} (got {first.get('input')!r})") from None
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{where}: {exc}") from None


def pick_tier(tiers: Mapping[str, T], tier: str) -> T:
    """`tiers[tier]`; presets named otherwise take "full" for "gpu", else "quick"."""
    if tier in tiers:
        return tiers[tier]
    fallback = "full" if tier == "gpu" else "quick"
    return tiers[fallback] if fallback in tiers else next(iter(tiers.values()))


def as_dict(s: Any) -> dict[str, Any]:
    """A settings object as a plain dict (tuples as lists), e.g. for a case's options JSON."""
    return {f.name: _plain(getattr(s, f.name)) for f in dataclasses.fields(s)}


def _plain(x: Any) -> Any:
    if isinstance(x, tuple | list):
        return [_plain(v) for v in x]
    if isinstance(x, Mapping):
        return {k: _plain(v) for k, v in x.items()}
    return x
