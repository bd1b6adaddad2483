"""Fused attention steps of RCMHA: the relative-attention steps of RMHA (the convs are module-level)."""

from __future__ import annotations

from attnbench.impls.rcmha import SPEC
from attnbench.kernels.rmha import rel_flex, rel_sdpa
from attnbench.ops import flex_can_run
from attnbench.registry import register_backend
from attnbench.spec import Backend

register_backend(SPEC, Backend.SDPA)(rel_sdpa)
register_backend(SPEC, Backend.FLEX, can_run=flex_can_run)(rel_flex)
