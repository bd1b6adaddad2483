"""CCGQA's latent attention step: the same SDPA step as CCA, registered under the CCGQA spec."""

from __future__ import annotations

from attnbench.impls.ccgqa import SPEC
from attnbench.kernels.cca import latent_attention_sdpa
from attnbench.registry import register_backend
from attnbench.spec import Backend

register_backend(SPEC, Backend.SDPA)(latent_attention_sdpa)
