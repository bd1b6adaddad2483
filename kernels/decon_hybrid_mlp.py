"""Fused steps of `decon_hybrid_mlp`: the same steps as `decon_mlp`.
The hybrid differs from it only in its model plan."""

from __future__ import annotations

from attnbench.impls.decon_hybrid_mlp import SPEC
from attnbench.kernels.decon_mlp import decon_mlp_native
from attnbench.registry import register_backend
from attnbench.spec import Backend

register_backend(SPEC, Backend.NATIVE)(decon_mlp_native)
