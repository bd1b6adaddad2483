"""Typed, frozen descriptions shared by every part: backends, workloads, method specs, rows.

Shape letters, defined once: B batch, Hq query heads, Hkv key/value heads, N sequence length,
D head dim. Functional tensors are `[B, H, N, D]`; layer methods take `x [B, N, C]`.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch


class Backend(enum.StrEnum):
    """Closed set of implementation kinds; peers wrap an external library by its name."""

    REFERENCE = "reference"
    SDPA = "sdpa"
    FLEX = "flex"
    FLEX_COMPILED = "flex_compiled"
    TRITON = "triton"
    NATIVE = "native"  # an efficient algorithm in plain torch ops (chunked, gathered, grouped)
    NATTEN = "natten"
    FLASH_ATTN = "flash_attn"
    XFORMERS = "xformers"
    FLA = "fla"
    SDPA_FLASH = "sdpa_flash"  # torch SDPA pinned to one kernel via torch.nn.attention.sdpa_kernel
    SDPA_CUDNN = "sdpa_cudnn"
    SDPA_EFFICIENT = "sdpa_efficient"

    @classmethod
    def parse(cls, name: str) -> Backend:
        """Resolve a backend name, listing the valid ones on failure."""
        try:
            return cls(name)
        except ValueError:
            valid = ", ".join(b.value for b in cls)
            raise ValueError(f"unknown backend {name!r}; valid: {valid}") from None


class Status(enum.StrEnum):
    OK = "ok"
    WRONG = "wrong"  # ran, but failed the numerics check
    OOM = "oom"
    ERROR = "error"
    TIMEOUT = "timeout"
    UNSUPPORTED = "unsupported"
    SKIPPED = "skipped"


Mode = Literal["fwd", "bwd", "fwd_bwd"]
MODES: tuple[str, ...] = ("fwd", "bwd", "fwd_bwd")
DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_SHORT_DTYPE = {"float64": "fp64", "float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


@dataclass(frozen=True, slots=True)
class Workload:
    """One attention problem size. `spatial` is the token grid for 2-D/3-D methods (prod == seq_q)."""

    batch: int = 1
    heads_q: int = 4
    heads_kv: int = 0  # 0 = same as heads_q
    seq_q: int = 256
    seq_kv: int = 256
    head_dim: int = 64
    dtype: str = "float32"
    causal: bool = False
    mode: str = "fwd"
    device: str = "cpu"
    spatial: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.heads_kv == 0:
            object.__setattr__(self, "heads_kv", self.heads_q)
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; valid: {', '.join(DTYPES)}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; valid: {', '.join(MODES)}")
        if min(self.batch, self.heads_q, self.heads_kv, self.seq_q, self.seq_kv, self.head_dim) < 1:
            raise ValueError(f"workload sizes must be positive: {self}")
        if self.heads_q % self.heads_kv:
            raise ValueError(f"heads_q={self.heads_q} is not divisible by heads_kv={self.heads_kv}")
        if self.spatial is not None and _prod(self.spatial) != self.seq_q:
            raise ValueError(f"spatial {self.spatial} does not multiply to seq_q={self.seq_q}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def groups(self) -> int:
        return self.heads_q // self.heads_kv

    @property
    def d_model(self) -> int:
        return self.heads_q * self.head_dim

    @property
    def id(self) -> str:
        """Readable id, e.g. `B1-Hq4-Hkv4-N256-D64-fp32-causal-fwd` (also the pytest id)."""
        n = f"N{self.seq_q}" if self.seq_q == self.seq_kv else f"Nq{self.seq_q}-Nk{self.seq_kv}"
        grid = f"-S{'x'.join(map(str, self.spatial))}" if self.spatial else ""
        mask = "causal" if self.causal else "full"
        return (f"B{self.batch}-Hq{self.heads_q}-Hkv{self.heads_kv}-{n}{grid}-D{self.head_dim}"
                f"-{_SHORT_DTYPE[self.dtype]}-{mask}-{self.mode}")

    def replace(self, **changes: Any) -> Workload:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["spatial"] = list(self.spatial) if self.spatial else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Workload:
        d = dict(d)
        if d.get("spatial"):
            d["spatial"] = tuple(d["spatial"])
        return cls(**d)


def _prod(xs: tuple[int, ...]) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


@dataclass(frozen=True, slots=True)
class Paper:
    title: str
    year: int
    arxiv: str = ""  # id like "2403.04690" or a URL

    @property
    def url(self) -> str:
        return self.arxiv if self.arxiv.startswith("http") else f"https://arxiv.org/abs/{self.arxiv}"


@dataclass(frozen=True, slots=True)
class Capabilities:
    causal: bool = True
    noncausal: bool = True
    gqa: bool = False
    backward: bool = True
    dims: tuple[int, ...] = (1,)
    dtypes: tuple[str, ...] = ("float64", "float32", "bfloat16", "float16")


@dataclass(frozen=True, slots=True)
class Tolerance:
    atol: float
    rtol: float


DEFAULT_TOLERANCE: dict[str, Tolerance] = {
    "float64": Tolerance(1e-9, 1e-7),
    "float32": Tolerance(2e-5, 1e-4),
    "bfloat16": Tolerance(2e-2, 2e-2),
    "float16": Tolerance(5e-3, 5e-3),
}


@dataclass(frozen=True, slots=True)
class FlopCount:
    """Analytic FLOPs of one call. `executed` counts the tiles a blocked kernel visits."""

    useful: float
    executed: float | None = None
    softmax: float = 0.0


Params = Mapping[str, Any]
FlopsFn = Callable[[Workload, Params], FlopCount]
MaskModFactory = Callable[[Workload, Params], Callable[..., Any]]
DensityFn = Callable[[Workload, float, Params], dict[str, Any]]
LayoutFn = Callable[[int, Params], tuple[str, ...]]


@dataclass(frozen=True, slots=True, eq=False)
class AttentionSpec:
    """Metadata of one registered method. `name` equals the file stem in impls/.

    `adapt` shapes a generic workload for the method (e.g. GQA sets heads_kv, 2-D methods
    set `spatial`); `check` returns why a workload/params pair is impossible, or None.
    `mask_mod` / `score_mod` are FlexAttention factories `(workload, params) -> fn | None`
    (None = no mask / no score edit); setting either makes the generic flex backends cover it.
    `claims` are the paper's headline results, shown next to what the harness measured.
    `wraps_base`: an inference-time intervention that wraps the functional method named by its
    `base` param (with `base_params`), rather than an attention of its own.
    `at_density(w, target, params)`: the param overrides (block/window/top-k/kernel) at which a
    sparse method attends about `target` of the allowed (query, key) pairs of `w`; proxies use it
    to run each sparse method on a density ladder instead of at a length where it is dense.
    `layout(n_layers, params)`: the per-layer method plan of a hybrid model (e.g. SpectFormer's
    spectral-then-attention stack); proxies build that stack instead of `n_layers` copies.
    """

    name: str
    title: str
    paper: Paper
    family: str
    kind: Literal["functional", "layer"] = "functional"
    defaults: Mapping[str, Any] = field(default_factory=dict)
    capabilities: Capabilities = Capabilities()
    flops: FlopsFn | None = None
    kv_cache_bytes: Callable[[Workload, Params], float] | None = None
    tolerance: Mapping[str, Tolerance] = field(default_factory=dict)
    adapt: Callable[[Workload, Params], Workload] | None = None
    check: Callable[[Workload, Params], str | None] | None = None
    mask_mod: MaskModFactory | None = None
    score_mod: MaskModFactory | None = None
    claims: tuple[str, ...] = ()
    wraps_base: bool = False
    at_density: DensityFn | None = None
    layout: LayoutFn | None = None

    def __hash__(self) -> int:
        return hash(self.name)

    def params(self, overrides: Params | None = None) -> dict[str, Any]:
        """Defaults merged with overrides; unknown keys raise."""
        out = dict(self.defaults)
        for k, v in (overrides or {}).items():
            if k not in out:
                raise ValueError(f"{self.name}: unknown parameter {k!r}; known: {sorted(out)}")
            out[k] = v
        return out

    def tol(self, dtype: str) -> Tolerance:
        return self.tolerance.get(dtype, DEFAULT_TOLERANCE[dtype])

    def shape(self, w: Workload, params: Params) -> Workload:
        """The workload as this method runs it (after `adapt`)."""
        return self.adapt(w, params) if self.adapt else w

    def why_not(self, w: Workload, params: Params) -> str | None:
        """Reason this method cannot run `w`, or None."""
        caps = self.capabilities
        if w.causal and not caps.causal:
            return f"{self.name} has no causal form"
        if not w.causal and not caps.noncausal:
            return f"{self.name} is causal only"
        if w.heads_kv != w.heads_q and not caps.gqa:
            return f"{self.name} does not take grouped kv heads"
        if w.mode != "fwd" and not caps.backward:
            return f"{self.name} has no backward"
        if w.dtype not in caps.dtypes:
            return f"{self.name} does not support {w.dtype}"
        dims = len(w.spatial) if w.spatial else 1
        if dims not in caps.dims:  # the method's own check usually says more (e.g. "N is not a square")
            own = self.check(w, params) if self.check else None
            return own or f"{self.name} takes {'/'.join(map(str, caps.dims))}-D token grids, not {dims}-D"
        return self.check(w, params) if self.check else None


def params_json(params: Params) -> str:
    """Canonical JSON of a params mapping (sorted keys; tuples as lists)."""
    return json.dumps(params, sort_keys=True, default=list)


def run_params(w: Workload, params: Params) -> dict[str, Any]:
    """Keyword params for an implementation call: the method params plus `spatial` when gridded."""
    out = dict(params)
    if w.spatial is not None:
        out["spatial"] = tuple(w.spatial)
    return out
