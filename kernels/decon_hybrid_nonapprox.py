"""Fused steps of `decon_hybrid_nonapprox`: the same steps as `decon_nonapprox`.
The hybrid differs from it only in its model plan."""

from __future__ import annotations

from attnbench.impls.decon_hybrid_nonapprox import SPEC
from attnbench.kernels.decon_nonapprox import decon_nonapprox_flex, decon_nonapprox_native
from attnbench.ops import flex_can_run
from attnbench.registry import register_backend
from attnbench.spec import Backend

register_backend(SPEC, Backend.NATIVE)(decon_nonapprox_native)
register_backend(SPEC, Backend.FLEX, can_run=flex_can_run)(decon_nonapprox_flex)
