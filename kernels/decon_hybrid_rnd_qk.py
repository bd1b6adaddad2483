"""Fused steps of `decon_hybrid_rnd_qk`: the same steps as `decon_rnd_qk`.
The hybrid differs from it only in its model plan."""

from __future__ import annotations

from attnbench.impls.decon_hybrid_rnd_qk import SPEC
from attnbench.kernels.mdha import mdha_sdpa
from attnbench.registry import register_backend
from attnbench.spec import Backend

register_backend(SPEC, Backend.SDPA)(mdha_sdpa)
