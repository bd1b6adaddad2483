"""Peer backend: NATTEN's `na1d/na2d/na3d` (SHI-Labs/NATTEN) on our `neighborhood` and `gna`.

NATTEN takes heads-last tensors `[B, *grid, H, D]`; we transpose from `[B, H, N, D]` and back.
Its kernel_size / stride / dilation / is_causal semantics are the ones our predicate follows
(`natten/backends/flex.py::get_na_flex_mask`). On CPU only its eager flex backend runs, forward
only, so the call is made under `torch.no_grad()`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import torch

from attnbench.impls.gna import SPEC as GNA_SPEC
from attnbench.impls.neighborhood import SPEC as NA_SPEC
from attnbench.impls.neighborhood import NAConfig, na_config, workload_config
from attnbench.kernels.neighborhood import multi_dim_flops_of  # executed FLOPs: NATTENSim tiles (GPU)
from attnbench.registry import register_backend
from attnbench.spec import Backend, Params, Workload


def natten_can_run(w: Workload, params: Params) -> str | None:
    """Why the natten peer cannot run `w`, or None."""
    if importlib.util.find_spec("natten") is None:
        return "natten is not installed (pip install --no-build-isolation natten, after torch)"
    if w.device == "cpu" and w.mode != "fwd":
        return "natten on CPU runs only its eager flex backend, forward only"
    if w.dtype == "float64":
        return "natten supports only float32, float16 and bfloat16"
    try:
        cfg = workload_config(w, params)
    except ValueError as exc:
        return str(exc)
    if (why := cfg.problem()) is not None:
        return why
    if len(cfg.shape) == 1 and cfg.kernel[0] == cfg.shape[0] and cfg.causal[0] and w.device == "cpu":
        return "natten routes 1-D k=N to its FMHA path, whose flex backend has no causal mask"
    return None


def natten_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: NAConfig) -> torch.Tensor:
    """`natten.na{r}d` on `[B, H, N, D]` tensors; returns `[B, H, N, D]`."""
    import natten

    fn = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[len(cfg.shape)]
    b, h, n, d = q.shape

    def heads_last(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(1, 2).reshape(b, *cfg.shape, t.shape[1], d).contiguous()

    backend = "flex-fna" if q.device.type == "cpu" else None
    with torch.no_grad() if q.device.type == "cpu" else torch.enable_grad():
        o = fn(heads_last(q), heads_last(k), heads_last(v), kernel_size=cfg.kernel, stride=cfg.stride,
               dilation=cfg.dilation, is_causal=cfg.causal, backend=backend)
    return o.reshape(b, n, h, d).transpose(1, 2)


@register_backend(NA_SPEC, Backend.NATTEN, can_run=natten_can_run, flops=multi_dim_flops_of(NA_SPEC))
def neighborhood_natten(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                        kernel_size: int | Sequence[int] = 7, dilation: int | Sequence[int] = 1,
                        is_causal: bool | Sequence[bool] = False, dims: int = 1,
                        spatial: Sequence[int] | None = None) -> torch.Tensor:
    cfg = na_config(q.shape[-2], causal, {"kernel_size": kernel_size, "dilation": dilation,
                                          "is_causal": is_causal, "dims": dims}, spatial)
    return natten_attention(q, k, v, cfg)


@register_backend(GNA_SPEC, Backend.NATTEN, can_run=natten_can_run, flops=multi_dim_flops_of(GNA_SPEC))
def gna_natten(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
               kernel_size: int | Sequence[int] = 16, stride: int | Sequence[int] = 16,
               dilation: int | Sequence[int] = 1, is_causal: bool | Sequence[bool] = False,
               dims: int = 1, spatial: Sequence[int] | None = None) -> torch.Tensor:
    cfg = na_config(q.shape[-2], causal, {"kernel_size": kernel_size, "stride": stride,
                                          "dilation": dilation, "is_causal": is_causal,
                                          "dims": dims}, spatial)
    return natten_attention(q, k, v, cfg)
