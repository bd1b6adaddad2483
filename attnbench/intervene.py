"""Shared plumbing of the inference-time interventions (vhr, var, imbalance_fix, softpag, gift, brush,
consistedit): the wrapped base attention, modality spans, materialised probabilities for the
reference paths, and FlexAttention calls with log-sum-exp for the fused ones.

Every intervention takes `base` (a registered functional method, default "mha") and `base_params`
(overrides of the base's defaults). The reference path rebuilds the base's logits densely from the
base spec (`QKᵀ/√D`, then its flex `score_mod` and `mask_mod` evaluated on broadcast index
tensors), so any base whose flex mods are written with broadcasting torch ops composes. Spans are
`[start, stop)` token indices (Python slice semantics, negatives allowed) or None for the
synthetic default (image tokens = the first N/4 tokens). `apply_intervention` swaps a trained model's
attention layers for an intervention wrapping them (same weights); `Guided` combines an original and
a perturbed model as guidance (PAG / SoftPAG). A method is an intervention when its spec `wraps_base`;
how each paper applies its method in a whole model (second forwards, layer ranges, detected sinks)
lives with the suite that runs it (`suites/hallucination/apply.py`).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from attnbench.ops import workload_of
from attnbench.registry import METHODS, MethodEntry
from attnbench.spec import Backend, Params, Workload

COMMON_DEFAULTS: dict[str, Any] = {"base": "mha", "base_params": {}}
_FUSED_ORDER = (Backend.SDPA, Backend.NATIVE, Backend.FLEX, Backend.REFERENCE)


def span_mask(span: list[int] | tuple[int, int] | None, n: int, default: tuple[float, float],
              device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool `[n]`, True on the span `[start, stop)`; None → `default` as fractions of n."""
    if span is None:
        start, stop = int(default[0] * n), int(default[1] * n)
    else:
        start, stop, _ = slice(int(span[0]), int(span[1])).indices(n)
    out = torch.zeros(n, dtype=torch.bool, device=device)
    out[start:stop] = True
    return out


def img_mask(span: list[int] | None, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Image-token mask `[n]` from `img_span` (default: the first N/4 tokens)."""
    return span_mask(span, n, (0.0, 0.25), device)


def index_mask(idx: list[int], n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool `[n]`, True at the token indices `idx` (negatives count from the end)."""
    out = torch.zeros(n, dtype=torch.bool, device=device)
    out[[i % n for i in idx]] = True
    return out


def minmax(x: torch.Tensor, dim: int = -1, flat: float = 0.0) -> torch.Tensor:
    """Min-max normalise along `dim` to [0, 1]; constant slices give `flat`."""
    lo, hi = x.amin(dim, keepdim=True), x.amax(dim, keepdim=True)
    rng = hi - lo
    return torch.where(rng > 0, (x - lo) / rng.clamp_min(torch.finfo(x.dtype).tiny), torch.full_like(x, flat))


def base_entry(params: Params) -> MethodEntry:
    return METHODS.get(params["base"])


def base_params(params: Params) -> dict[str, Any]:
    return base_entry(params).spec.params(params.get("base_params") or {})


def check_base(w: Workload, params: Params) -> str | None:
    """Why the wrapped base cannot run `w` (or cannot be wrapped), or None."""
    entry = base_entry(params)
    spec = entry.spec
    if spec.wraps_base:
        return f"base {spec.name!r} is itself an intervention"
    if spec.kind != "functional":
        return f"base {spec.name!r} is a layer method; interventions wrap functional q,k,v attention"
    if spec.name != "mha" and spec.mask_mod is None and spec.score_mod is None:
        return f"base {spec.name!r} has no flex mask_mod/score_mod, so its probabilities cannot be rebuilt"
    if w.seq_q != w.seq_kv:
        return "interventions index queries and keys with the same spans; needs seq_q == seq_kv"
    return spec.why_not(w, base_params(params))


def base_mods(q: torch.Tensor, k: torch.Tensor, causal: bool, params: Params, q_offset: int = 0
              ) -> tuple[Callable[..., Any] | None, Callable[..., Any] | None]:
    """The base's flex `(mask_mod, score_mod)` for these tensors (None = absent).

    `q_offset`: q holds the rows `q_offset…` of a sequence of `q_offset + Nq` queries."""
    spec, bp = base_entry(params).spec, base_params(params)
    w = workload_of(q, k, causal, q_offset=q_offset)
    return (spec.mask_mod(w, bp) if spec.mask_mod else None,
            spec.score_mod(w, bp) if spec.score_mod else None)


def logits(q: torch.Tensor, k: torch.Tensor, causal: bool, params: Params,
           keep: torch.Tensor | None = None, q_offset: int = 0) -> torch.Tensor:
    """The base's logits `[B, H, Nq, Nk]` in fp32/fp64, `-inf` where masked (or outside `keep [Nk]`/`[B, Nk]`).

    `q_offset`: q holds the rows `q_offset…` of the full query sequence (see `base_mods`)."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    s = (q.to(acc) @ k.to(acc).transpose(-1, -2)) * q.shape[-1] ** -0.5
    mask_mod, score_mod = base_mods(q, k, causal, params, q_offset)
    b, h, nq, nk = s.shape
    dev = q.device
    idx = (torch.arange(b, device=dev)[:, None, None, None], torch.arange(h, device=dev)[None, :, None, None],
           torch.arange(q_offset, q_offset + nq, device=dev)[None, None, :, None],
           torch.arange(nk, device=dev)[None, None, None, :])
    if score_mod is not None:
        s = score_mod(s, *idx).to(acc)
    allowed = torch.ones(s.shape, dtype=torch.bool, device=dev)
    if mask_mod is not None:
        allowed = allowed & mask_mod(*idx)
    if keep is not None:
        keep = keep.to(dev)
        allowed = allowed & (keep[:, None, None, :] if keep.dim() == 2 else keep)
    return s.masked_fill(~allowed, float("-inf"))


def softmax0(s: torch.Tensor) -> torch.Tensor:
    """Row softmax where fully masked rows give zeros instead of NaN."""
    return torch.nan_to_num(torch.softmax(s, dim=-1), nan=0.0)


def probs(q: torch.Tensor, k: torch.Tensor, causal: bool, params: Params,
          keep: torch.Tensor | None = None, q_offset: int = 0) -> torch.Tensor:
    """The base's probabilities `[B, H, Nq, Nk]` (materialised; fused paths use it for a few rows only)."""
    return softmax0(logits(q, k, causal, params, keep, q_offset))


def base_out(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, params: Params,
             fused: bool) -> torch.Tensor:
    """The base's output `[B, H, N, D]`: its reference, or its fastest fused backend (sdpa > native > flex)."""
    entry, bp = base_entry(params), base_params(params)
    backend = next(b for b in _FUSED_ORDER if b in entry.impls) if fused else Backend.REFERENCE
    return entry.impl(backend).prepare(q, k, v, causal=causal, params=bp)(q, k, v)


def flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, params: Params, *,
         keep: torch.Tensor | None = None, score_edit: Callable[..., Any] | None = None
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """FlexAttention of the base restricted to keys in `keep` (`[Nk]`, or `[B, Nk]` per batch element), with an
    extra additive score edit.

    Returns `(O [B, H, N, D], lse [B, H, N])` (natural log; rows with no allowed key: O = 0, lse = -inf).
    `score_edit(score, b, h, q_idx, kv_idx)` runs after the base's own score_mod.
    """
    from torch.nn.attention.flex_attention import AuxRequest, create_block_mask, flex_attention

    mask_mod, score_mod = base_mods(q, k, causal, params)
    per_batch = keep is not None and keep.dim() == 2
    if keep is not None:
        keep = keep.to(q.device)
        inner = mask_mod

        def mask_mod(b, h, q_idx, kv_idx):  # noqa: F811 - restriction of the base mask
            m = keep[b, kv_idx] if per_batch else keep[kv_idx]
            return m & inner(b, h, q_idx, kv_idx) if inner is not None else m

    mod = score_mod
    if score_edit is not None:
        def mod(score, b, h, q_idx, kv_idx):
            base = score_mod(score, b, h, q_idx, kv_idx) if score_mod is not None else score
            return score_edit(base, b, h, q_idx, kv_idx)

    nq, nk = q.shape[-2], k.shape[-2]
    bm_batch = q.shape[0] if per_batch else None
    block_mask = create_block_mask(mask_mod, bm_batch, None, nq, nk, device=q.device) if mask_mod else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*without torch.compile.*")
        o, aux = flex_attention(q, k, v, score_mod=mod, block_mask=block_mask, return_aux=AuxRequest(lse=True))
    return o, aux.lse


def mass(lse_part: torch.Tensor, lse_all: torch.Tensor) -> torch.Tensor:
    """Probability mass of a key subset per row: `exp(lse_S − lse_all)` (0 where the subset is empty)."""
    return torch.exp(lse_part.float() - lse_all.float()).nan_to_num(nan=0.0)


def rows_probs(q: torch.Tensor, k: torch.Tensor, causal: bool, params: Params, rows: slice
               ) -> torch.Tensor:
    """The base's probabilities of the query rows `rows` only, `[B, H, len(rows), Nk]`."""
    start, stop, _ = rows.indices(q.shape[-2])
    return probs(q[:, :, start:stop], k, causal, params, q_offset=start)


def head_mask(heads: list[int] | None, h: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool `[H]`: the selected heads (None = every head)."""
    out = torch.zeros(h, dtype=torch.bool, device=device)
    out[list(range(h)) if heads is None else [i % h for i in heads]] = True
    return out


def base_flops(calls: float = 1.0) -> Callable[[Workload, Params], Any]:
    """FLOPs of `calls` base attention passes (the base spec's formula, dense if it has none)."""
    from attnbench.flops import dense_flops
    from attnbench.spec import FlopCount

    def flops(w: Workload, params: Params) -> FlopCount:
        spec = base_entry(params).spec
        f = spec.flops(w, base_params(params)) if spec.flops else dense_flops(w)
        ex = f.executed if f.executed is not None else f.useful
        return FlopCount(useful=calls * f.useful, executed=calls * ex, softmax=calls * f.softmax)

    return flops


# -- interventions on a trained model -----------------------------------------------------------
class Guided(nn.Module):
    """Guidance at model level (PAG / SoftPAG): `(1 + w)·orig(x) − w·perturbed(x)` on the outputs (logits).

    w = 0 is `orig` (the perturbed model is not run); a perturbation that changes nothing gives `orig`
    for every w."""

    def __init__(self, orig: nn.Module, perturbed: nn.Module, scale: float) -> None:
        super().__init__()
        self.orig, self.perturbed, self.scale = orig, perturbed, float(scale)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.orig(*args, **kwargs)
        if self.scale == 0:
            return out
        return (1 + self.scale) * out - self.scale * self.perturbed(*args, **kwargs)


def wrapped_layers(model: nn.Module, method: str) -> list[nn.Module]:
    """The model's attention layers that run `method` (after `apply_intervention`), in module order."""
    from attnbench.layers import AttentionLayer

    return [m for m in model.modules() if isinstance(m, AttentionLayer) and m.entry.name == method]


def apply_intervention(model: nn.Module, method: str, params: Mapping[str, Any] | None = None,
                       backend: str = "reference", layers: Mapping[int, Mapping[str, Any]] | None = None
                       ) -> nn.Module:
    """A copy of `model` whose generic attention layers run `method` wrapping their trained base.

    Weights are shared by value (deep copy); `params` are the intervention's (its `base` and
    `base_params` are filled from each layer). A true `except_last_layer` in the method's params
    leaves the last attention layer as is (VAR). `layers` (attention-layer index → param overrides)
    wraps only the listed layers, each with its own params (HeadHunter's per-layer head sets).
    Layer methods (own projections) cannot be wrapped: ValueError.
    """
    from attnbench.layers import AttentionLayer, build_layer  # layers build registered methods: import late

    out = copy.deepcopy(model)
    found = [(name, m) for name, m in out.named_modules() if isinstance(m, AttentionLayer)]
    if not found:
        raise ValueError("apply_intervention: the model has no generic AttentionLayer to wrap")
    chosen = list(enumerate(found))
    if METHODS.get(method).spec.params(params).get("except_last_layer"):
        chosen = chosen[:-1]
    if layers is not None:
        chosen = [(i, nl) for i, nl in chosen if i in layers]
    for i, (name, layer) in chosen:
        base_p = {k: v for k, v in layer.params.items() if k != "spatial"}
        p = {**(params or {}), **((layers or {}).get(i, {})), "base": layer.entry.name, "base_params": base_p}
        METHODS.get(method).spec.params(p)
        new = build_layer(method, backend, layer.n_heads * layer.head_dim, layer.n_heads,
                          kv_heads=layer.kv_heads, causal=layer.causal, params=p)
        new.load_state_dict(layer.state_dict())
        parent = out.get_submodule(name.rsplit(".", 1)[0]) if "." in name else out
        ref = next(layer.parameters())
        setattr(parent, name.rsplit(".", 1)[-1], new.to(device=ref.device, dtype=ref.dtype))
    return out
