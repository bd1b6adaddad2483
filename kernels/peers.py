"""Peer backends: the kernels a GPU user would pick instead, measured side by side.

- `sdpa_flash`, `sdpa_cudnn`, `sdpa_efficient`: the method's own `sdpa` implementation run with
  torch's SDPA pinned to one kernel (`torch.nn.attention.sdpa_kernel`), so a row names the kernel
  that ran (FlashAttention-2 and cuDNN attention as every torch install ships them). Generic: every
  functional method with an `sdpa` backend gets the three.
- `flash_attn` (Dao-AILab FA2 `flash_attn_func`; FA3 `flash_attn_interface` on Hopper when present)
  for mha / gqa / mqa / sliding_window (its `window_size` is our window convention).
- `xformers` (`memory_efficient_attention` with bottom-right causal / local biases) for the same four.
- `fla` (flash-linear-attention `chunk_linear_attn`) for causal `linear` with φ applied first.

Each library is imported inside its function; `can_run` gives the reason when it is missing or the
device, dtype, head size or mask is outside what the kernel takes.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch

from attnbench.device import backend_unavailable
from attnbench.impls.gqa import SPEC as GQA_SPEC
from attnbench.impls.linear import SPEC as LINEAR_SPEC
from attnbench.impls.linear import phi
from attnbench.impls.mha import SPEC as MHA_SPEC
from attnbench.impls.mqa import SPEC as MQA_SPEC
from attnbench.impls.sliding_window import SPEC as SW_SPEC
from attnbench.ops import workload_of
from attnbench.registry import METHODS, Impl, register_backend, register_generic_backend
from attnbench.spec import AttentionSpec, Backend, Params, Workload, params_json, run_params

HALF = ("float16", "bfloat16")

# -- SDPA pinned to one kernel ----------------------------------------------------------------------------
# name → (SDPBackend member, dtypes it takes, largest head size, smallest compute capability)
_PINNED: dict[Backend, tuple[str, tuple[str, ...], int, tuple[int, int]]] = {
    Backend.SDPA_FLASH: ("FLASH_ATTENTION", HALF, 256, (8, 0)),
    Backend.SDPA_CUDNN: ("CUDNN_ATTENTION", HALF, 128, (8, 0)),
    Backend.SDPA_EFFICIENT: ("EFFICIENT_ATTENTION", ("float32",) + HALF, 512, (5, 0)),
}


def pinned_context(backend: Backend) -> Any:
    """`sdpa_kernel([SDPBackend.X])`: SDPA may run only that kernel (it raises when it cannot)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, _PINNED[backend][0])])


def pinned_static_reason(backend: Backend, w: Workload) -> str | None:
    """What rules the pinned kernel out before trying it: device, dtype, head size, GPU generation."""
    if (why := backend_unavailable(backend, w.device)) is not None:
        return why
    _, dtypes, max_d, min_cc = _PINNED[backend]
    if w.dtype not in dtypes:
        return f"{backend.value} takes {', '.join(dtypes)}, not {w.dtype}"
    if w.head_dim > max_d or w.head_dim % 8:
        return f"{backend.value} takes head sizes that are multiples of 8 up to {max_d}, not {w.head_dim}"
    idx = torch.device(w.device).index or 0
    cc = torch.cuda.get_device_capability(idx)
    if cc < min_cc:
        return f"{backend.value} needs compute capability ≥ {min_cc[0]}.{min_cc[1]}, this GPU is {cc[0]}.{cc[1]}"
    return None


def pinned(fn: Callable[..., Any], backend: Backend, staged: bool) -> Callable[..., Any]:
    """`fn` (an `sdpa` implementation) run under the pinned kernel; a staged fn's steady state too."""

    def call(*args: Any, **kwargs: Any) -> Any:
        with pinned_context(backend):
            out = fn(*args, **kwargs)
        if not staged:
            return out

        def run(*a: Any) -> Any:
            with pinned_context(backend):
                return out(*a)

        return run

    return call


@functools.lru_cache(maxsize=256)
def _probe(method: str, backend: Backend, w: Workload, params_key: str) -> str | None:
    """Run the method's pinned SDPA once at `w` (batch 1, forward): the kernel's own refusal, or None.

    Whether the flash / cuDNN kernel accepts a call also depends on the mask the method passes,
    which only the call shows; torch warns the reason and raises "No available kernel".
    """
    import json

    entry = METHODS.get(method)
    impl, params = entry.impl(Backend.SDPA), json.loads(params_key)
    g = torch.Generator(device=w.device).manual_seed(0)
    q, k, v = (torch.randn(1, h, n, w.head_dim, device=w.device, dtype=w.torch_dtype, generator=g)
               for h, n in ((w.heads_q, w.seq_q), (w.heads_kv, w.seq_kv), (w.heads_kv, w.seq_kv)))
    fn = pinned(impl.fn, backend, impl.staged)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        try:
            out = fn(q, k, v, causal=w.causal, **run_params(w, params))
            if impl.staged:
                out(q, k, v)
        except torch.OutOfMemoryError:
            return None  # not a refusal: the case itself will record its oom
        except RuntimeError as exc:
            said = [str(c.message).split("\n")[0] for c in caught if "attention" in str(c.message).lower()]
            if not said and not any(m in str(exc).lower() for m in ("no available kernel", "no viable backend")):
                return None  # some other failure: let the case run and record it as the error it is
            return f"{backend.value} refused this call: {(said or [str(exc)])[0][:200]}"
        except Exception:  # noqa: BLE001 — not the kernel's refusal: the case will run and record it
            return None
    return None


def _pinned_impl(spec: AttentionSpec, backend: Backend) -> Impl:
    base = METHODS.get(spec.name).impl(Backend.SDPA)

    def can_run(w: Workload, params: Params) -> str | None:
        why = pinned_static_reason(backend, w) or base.can_run(w, params)
        if why is None and w.device.startswith("cuda"):
            why = _probe(spec.name, backend, w.replace(batch=1, mode="fwd"), params_json(dict(params)))
        return why

    return Impl(spec.name, backend, pinned(base.fn, backend, base.staged), can_run, base.staged, base.flops)


def _has_sdpa(spec: AttentionSpec) -> bool:
    return spec.kind == "functional" and spec.name in METHODS and Backend.SDPA in METHODS.get(spec.name).impls


for _b in _PINNED:
    register_generic_backend(_b, _has_sdpa, lambda spec, _b=_b: _pinned_impl(spec, _b))


# -- flash-attn (FA2 / FA3) --------------------------------------------------------------------------------
def _heads_last(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(1, 2).contiguous()


def flash_attn_can_run(w: Workload, params: Params) -> str | None:
    """FA2/FA3: CUDA, fp16/bf16, head size ≤ 256 (multiple of 8), bottom-right causal like ours."""
    if (why := backend_unavailable(Backend.FLASH_ATTN, w.device)) is not None:
        return why
    if w.dtype not in HALF:
        return f"flash_attn takes float16 and bfloat16, not {w.dtype}"
    if w.head_dim > 256 or w.head_dim % 8:
        return f"flash_attn takes head sizes that are multiples of 8 up to 256, not {w.head_dim}"
    return None


def flash_attn_call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
                    window: tuple[int, int] = (-1, -1)) -> torch.Tensor:
    """FA3 (`flash_attn_interface`) on Hopper when installed, else FA2 `flash_attn_func`; GQA native."""
    import importlib.util

    args = (_heads_last(q), _heads_last(k), _heads_last(v))
    hopper = q.is_cuda and torch.cuda.get_device_capability(q.device)[0] == 9
    if hopper and importlib.util.find_spec("flash_attn_interface"):
        from flash_attn_interface import flash_attn_func as fa3

        o = fa3(*args, causal=causal, window_size=window)
    else:
        from flash_attn import flash_attn_func

        o = flash_attn_func(*args, causal=causal, window_size=window)
    o = o[0] if isinstance(o, tuple) else o  # some FA3 releases also return the LSE
    return o.transpose(1, 2)


def sw_window(window: int, causal: bool) -> tuple[int, int]:
    """Our window as FA-2's `window_size=(left, right)` (the convention impls/sliding_window follows)."""
    return (window - 1, 0) if causal else (window // 2, window // 2)


@register_backend(MHA_SPEC, Backend.FLASH_ATTN, can_run=flash_attn_can_run)
def mha_flash_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
    return flash_attn_call(q, k, v, causal=causal)


@register_backend(GQA_SPEC, Backend.FLASH_ATTN, can_run=flash_attn_can_run)
def gqa_flash_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                   groups: int = 4) -> torch.Tensor:
    return flash_attn_call(q, k, v, causal=causal)


@register_backend(MQA_SPEC, Backend.FLASH_ATTN, can_run=flash_attn_can_run)
def mqa_flash_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
    return flash_attn_call(q, k, v, causal=causal)


@register_backend(SW_SPEC, Backend.FLASH_ATTN, can_run=flash_attn_can_run)
def sliding_window_flash_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                              window: int = 32) -> torch.Tensor:
    return flash_attn_call(q, k, v, causal=causal, window=sw_window(window, causal))


# -- xformers -----------------------------------------------------------------------------------------------
def xformers_can_run(w: Workload, params: Params) -> str | None:
    """xformers' memory-efficient attention: CUDA, fp32/fp16/bf16, head size ≤ 256."""
    if (why := backend_unavailable(Backend.XFORMERS, w.device)) is not None:
        return why
    if w.dtype == "float64":
        return "xformers takes float32, float16 and bfloat16, not float64"
    if w.head_dim > 256:
        return f"xformers takes head sizes up to 256, not {w.head_dim}"
    return None


def xformers_call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
                  window: tuple[int, int] | None = None) -> torch.Tensor:
    """`memory_efficient_attention` in its BMGHK layout (kv heads expanded as strided views for GQA)."""
    from xformers.ops import fmha

    b, hq, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    g = hq // hkv
    qx = q.transpose(1, 2).reshape(b, nq, hkv, g, d)
    kx, vx = (t.transpose(1, 2)[:, :, :, None].expand(b, nk, hkv, g, t.shape[-1]) for t in (k, v))
    bias: Any = None
    if window is not None:  # inclusive distances left/right of the query's key position, bottom-right
        bias = fmha.attn_bias.LocalAttentionFromBottomRightMask(window_left=window[0], window_right=window[1])
    elif causal:
        bias = fmha.attn_bias.LowerTriangularFromBottomRightMask()
    o = fmha.memory_efficient_attention(qx, kx, vx, attn_bias=bias)
    return o.reshape(b, nq, hq, v.shape[-1]).transpose(1, 2)


@register_backend(MHA_SPEC, Backend.XFORMERS, can_run=xformers_can_run)
def mha_xformers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
    return xformers_call(q, k, v, causal=causal)


@register_backend(GQA_SPEC, Backend.XFORMERS, can_run=xformers_can_run)
def gqa_xformers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                 groups: int = 4) -> torch.Tensor:
    return xformers_call(q, k, v, causal=causal)


@register_backend(MQA_SPEC, Backend.XFORMERS, can_run=xformers_can_run)
def mqa_xformers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
    return xformers_call(q, k, v, causal=causal)


@register_backend(SW_SPEC, Backend.XFORMERS, can_run=xformers_can_run)
def sliding_window_xformers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                            window: int = 32) -> torch.Tensor:
    return xformers_call(q, k, v, causal=causal, window=sw_window(window, causal))


# -- flash-linear-attention ---------------------------------------------------------------------------------
def fla_can_run(w: Workload, params: Params) -> str | None:
    """fla's chunked linear attention: CUDA, causal with Nq == Nk, fp32/fp16/bf16."""
    if (why := backend_unavailable(Backend.FLA, w.device)) is not None:
        return why
    if not w.causal or w.seq_q != w.seq_kv:
        return "fla's chunk_linear_attn is causal with seq_q == seq_kv only"
    if w.dtype == "float64":
        return "fla takes float32, float16 and bfloat16, not float64"
    return None


@register_backend(LINEAR_SPEC, Backend.FLA, can_run=fla_can_run)
def linear_fla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
               feature_map: str = "elu", normalize: bool = True, chunk_size: int = 64) -> torch.Tensor:
    """`fla.ops.linear_attn.chunk_linear_attn` on φ(q), φ(k) with scale 1 (our method has no 1/√D).

    fla's `normalize` divides by `φ(q_i)·Σ_{j≤i} φ(k_j)` (+1e-10): the same normaliser as ours.
    GQA: kv heads are repeated (fla takes equal head counts). `chunk_size` is fla's own (64).
    """
    from fla.ops.linear_attn import chunk_linear_attn

    w = workload_of(q, k, causal)
    if (why := fla_can_run(w, {})) is not None:
        raise ValueError(why)
    g = q.shape[1] // k.shape[1]
    qf, kf = phi(q, feature_map).to(q.dtype), phi(k, feature_map).to(k.dtype)
    kf, vf = kf.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    o, _ = chunk_linear_attn(_heads_last(qf), _heads_last(kf), _heads_last(vf), scale=1.0, normalize=normalize)
    return o.transpose(1, 2).to(q.dtype)
