"""Fused steps of `decon_hybrid_approx`: the same steps as `decon_approx`.
The hybrid differs from it only in its model plan."""

from __future__ import annotations

from attnbench.impls.decon_hybrid_approx import SPEC
from attnbench.kernels.decon_approx import decon_approx_native
from attnbench.registry import register_backend
from attnbench.spec import Backend

register_backend(SPEC, Backend.NATIVE)(decon_approx_native)
