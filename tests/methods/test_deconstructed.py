"""Hybrid layer plans for the Deconstructing-Attention variants (spec card methods-modeling A4)."""

from __future__ import annotations

import pytest

from attnbench.impls._deconstructed import HYBRID_PATTERNS, hybrid_layers
from attnbench.registry import METHODS

V = "decon_nonapprox"


def _variant_layers(pattern: str, n: int = 24) -> list[int]:
    return [i for i, m in enumerate(hybrid_layers(n, V, pattern), start=1) if m == V]


def test_paper_ranges_for_24_layers() -> None:
    assert _variant_layers("alternate") == list(range(1, 25, 2))
    assert _variant_layers("top") == list(range(13, 25))
    assert _variant_layers("middle") == list(range(7, 19))
    assert _variant_layers("bottom") == list(range(1, 7))
    assert [i for i in range(1, 25) if i not in _variant_layers("quarter")] == list(range(4, 25, 4))
    assert _variant_layers("bilateral") == [1, 24]
    assert _variant_layers("uniform") == list(range(1, 25))


@pytest.mark.parametrize("pattern", HYBRID_PATTERNS)
def test_every_layer_is_a_registered_method(pattern: str) -> None:
    plan = hybrid_layers(6, V, pattern)
    assert len(plan) == 6 and all(m in METHODS for m in plan)


def test_unknown_pattern_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="alternate"):
        hybrid_layers(4, V, "sideways")
