"""SDPA step of StaticEmbQK."""

from __future__ import annotations

from attnbench.impls.decon_static_qk import SPEC
from attnbench.kernels.mdha import mdha_sdpa
from attnbench.registry import register_backend
from attnbench.spec import Backend

register_backend(SPEC, Backend.SDPA)(mdha_sdpa)
