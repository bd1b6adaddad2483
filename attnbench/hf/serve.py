"""Serve an attnbench method as a Hugging Face attention implementation.

`attention_fn` adapts a registered functional method to transformers' attention-interface signature;
`register` / `apply` / `load` install it in a model. The method always runs causally, bottom-right
aligned (`j ≤ i + Nk − Nq`), which is exactly a decode step against a dynamic KV cache.

Masks: the implementation is registered with transformers' `sdpa_mask`, so the model passes None for
a plain causal batch and a boolean `[B, 1, Nq, Nk]` mask otherwise. No method takes a mask, so a mask
is accepted only when it is causal plus *right* padding (no real query can see a padding key, hence
the unmasked causal method is exact on every real position); left padding, padding inside a cached
sequence, sliding-window/packed/static-cache masks raise `NotImplementedError("<method> cannot take a
padding mask ...")`. Interventions (`spec.wraps_base`) refuse any padding: their spans and statistics
cover the whole sequence.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from attnbench.ops import causal_mask, repeat_kv, workload_of
from attnbench.registry import METHODS, MethodEntry, UnknownNameError, load_plugins
from attnbench.spec import AttentionSpec, Backend, Params, Workload, params_json, run_params

PROBE_LEN = 1024  # sequence length `why_not` checks a method at (defaults are sized for long contexts)
_UNSUPPORTED_KWARGS = ("softcap", "s_aux", "sinks", "sliding_window")


def entry_of(method: str) -> MethodEntry:
    """The registry entry of `method` (plugins loaded on first use)."""
    load_plugins()
    return METHODS.get(method)


def structural_reason(spec: AttentionSpec) -> str | None:
    """Why a method cannot take a causal LM's q, k, v at all (no causal form, grids only, own weights)."""
    caps = spec.capabilities
    if not caps.causal:
        return f"{spec.name} has no causal form (capabilities.causal is False)"
    if 1 not in caps.dims:
        return f"{spec.name} attends over {'/'.join(map(str, caps.dims))}-D token grids only, not a 1-D sequence"
    if spec.kind == "layer":
        extra = "; convert the checkpoint with attnbench.hf.to_dha instead" if spec.name == "dha" else ""
        return (f"{spec.name} is a layer method: it owns its projections and weights, so it cannot take "
                f"a pretrained model's q, k, v{extra}")
    return None


def fill_params(spec: AttentionSpec, params: Params, explicit: frozenset[str], heads_q: int,
                heads_kv: int) -> dict[str, Any]:
    """Resolved params for a model: a `groups` parameter the caller did not set follows the model's grouping."""
    out = dict(params)
    if "groups" in spec.defaults and "groups" not in explicit and heads_q % heads_kv == 0:
        out["groups"] = heads_q // heads_kv
    return out


def fit(entry: MethodEntry, backend: Backend, w: Workload, params: Params) -> tuple[Workload, int, str | None]:
    """(workload as the method runs it, k/v repeat factor, reason it cannot run or None).

    A method gets the model's kv heads when its spec takes them (`adapt` asks for that many, and
    `capabilities.gqa`); kv heads are repeated when it wants more (e.g. every query head); fewer
    than the model has is impossible (convert the model with `to_gqa`).
    """
    spec = entry.spec
    want = spec.shape(w, params).heads_kv
    if want % w.heads_kv or want > w.heads_q:
        return w, 1, (f"{spec.name} takes {want} kv heads; the model has {w.heads_kv} "
                      f"(convert it with attnbench.hf.to_gqa)")
    rep = w.heads_q // w.heads_kv if not spec.capabilities.gqa else want // w.heads_kv
    run = spec.shape(w.replace(heads_kv=w.heads_kv * rep), params)
    try:
        return run, rep, entry.why_not(backend, run, params)
    except ValueError as e:  # a method's check may raise on an impossible shape
        return run, rep, str(e)


def check_mask(spec: AttentionSpec, mask: torch.Tensor | None, nq: int, nk: int) -> None:
    """Raise NotImplementedError unless `mask` is None or causal plus right padding (see the module doc)."""
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.ndim != 4:
        raise NotImplementedError(f"{spec.name} cannot take a padding mask of type {type(mask).__name__}")
    m = mask[..., :nk]
    allowed = m if m.dtype == torch.bool else m > torch.finfo(m.dtype).min / 2
    allowed = allowed.expand(-1, -1, nq, nk)
    if bool((allowed.any(1) != allowed.all(1)).any()):
        raise NotImplementedError(f"{spec.name} cannot take a padding mask that differs across heads")
    allowed = allowed[:, 0]  # [B, Nq, Nk]
    causal = causal_mask(nq, nk, allowed.device)
    if bool((allowed == causal).all()):
        return
    pad = ~allowed.any(1)  # [B, Nk]: keys no query may read
    real = ~pad[:, nk - nq:]  # query i sits at key position i + Nk − Nq
    leaks = real[:, :, None] & causal & pad[:, None, :]
    if spec.wraps_base or bool(leaks.any()) or not bool((allowed == (causal & ~pad[:, None, :])).all()):
        why = ("an intervention's spans and statistics cover the whole padded sequence" if spec.wraps_base else
               "only right padding (no real query sees a padding key) runs exactly without a mask; left padding, "
               "cached padding, sliding-window, packed-sequence and static-cache masks are not supported")
        raise NotImplementedError(f"{spec.name} cannot take a padding mask: {why}")


def _is_last_layer(module: Any) -> bool:
    cfg = getattr(module, "config", None)
    n = getattr(cfg, "num_hidden_layers", None)
    return n is not None and getattr(module, "layer_idx", None) == n - 1


def attention_fn(method: str, backend: str = "reference", **params: Any) -> Callable[..., Any]:
    """A transformers attention function running `method` / `backend` causally.

    Signature `(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs)
    -> (out [B, N, H, D], None)` with query `[B, H, Nq, D]`, key/value `[B, H_kv, Nk, D]`. A scaling
    other than `1/√D` pre-scales q by `scaling·√D`; a module carrying DHA head maps (`to_dha`) has its
    fused k/v heads expanded per query head first. Params are validated here; each call raises
    ValueError when the method cannot run that workload (e.g. a decode step for a prefill-only method,
    or a backend without backward while gradients are on).
    """
    entry = entry_of(method)
    spec, impl = entry.spec, entry.impl(backend)
    if why := structural_reason(spec):
        raise ValueError(why)
    resolved, explicit = spec.params(params), frozenset(params)
    skip_last = bool(spec.wraps_base and resolved.get("except_last_layer"))

    def attend(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
               **kwargs: Any) -> tuple[torch.Tensor, None]:
        if not getattr(module, "is_causal", True):
            raise NotImplementedError(f"{method}: attnbench.hf serves causal self-attention only")
        if dropout:
            raise NotImplementedError(f"{method}: attention dropout is not supported (use model.eval())")
        if extra := [k for k in _UNSUPPORTED_KWARGS if kwargs.get(k) is not None]:
            raise NotImplementedError(f"{method}: the model asks for {', '.join(extra)}, which attnbench.hf "
                                      f"does not apply")
        kmap = getattr(module, "attnbench_kmap", None)
        if kmap is not None:
            key, value = key[:, list(kmap)], value[:, list(module.attnbench_vmap)]
        d = query.shape[-1]
        if scaling is not None and not math.isclose(scaling, d ** -0.5, rel_tol=1e-6):
            query = query * (scaling * math.sqrt(d))
        check_mask(spec, attention_mask, query.shape[-2], key.shape[-2])
        p = fill_params(spec, resolved, explicit, query.shape[1], key.shape[1])
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
        w = workload_of(query, key, True, p).replace(mode="fwd_bwd" if grad else "fwd")
        w, rep, why = fit(entry, impl.backend, w, p)
        if why:
            raise ValueError(why if why.startswith(method) else f"{method}: {why}")
        k, v = repeat_kv(key, rep), repeat_kv(value, rep)
        if skip_last and _is_last_layer(module):  # VAR-style `except_last_layer`: the base runs there
            from attnbench.intervene import base_out
            out = base_out(query, k, v, True, p, fused=impl.backend is not Backend.REFERENCE)
        else:
            out = impl.prepare(query, k, v, causal=True, params=run_params(w, p))(query, k, v)
        return out.to(query.dtype).transpose(1, 2).contiguous(), None

    attend.__name__ = f"attnbench_{method}"
    return attend


def _model_heads(config: Any) -> tuple[int, int, int] | None:
    if config is None:
        return None
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    hq = cfg.num_attention_heads
    hkv = getattr(cfg, "num_key_value_heads", None) or hq
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // hq
    return hq, hkv, d


def why_not(method: str, config: Any = None, *, backend: str = "reference", cache: bool = False,
            params: Mapping[str, Any] | None = None, seq_len: int = PROBE_LEN) -> str | None:
    """Why `method` cannot serve a causal LM (None = it can).

    Args:
        method: registered method name. config: the model's config (heads, head_dim); None = a model
            whose kv heads are whatever the method takes.
        backend: the backend to serve with. params: method overrides.
        cache: also require decode steps against a KV cache (Nq = 1 < Nk). `apply` turns the KV cache
            off for methods that serve only full sequences.
        seq_len: the sequence length checked (method defaults are sized for long contexts).
    """
    try:
        entry = entry_of(method)
        entry.impl(backend)
    except UnknownNameError as e:
        return str(e)
    spec = entry.spec
    if why := structural_reason(spec):
        return why
    try:
        resolved = spec.params(params)
    except ValueError as e:
        return str(e)
    if spec.wraps_base:
        base = resolved.get("base")
        if why := why_not(base, config, cache=cache, params=resolved.get("base_params") or {}, seq_len=seq_len):
            return f"{method} wraps base {base!r}, which cannot serve: {why}"
    heads = _model_heads(config)
    if heads is None:
        probe = Workload(heads_q=8, heads_kv=8, seq_q=seq_len, seq_kv=seq_len, head_dim=64, causal=True)
        heads = (8, spec.shape(probe, resolved).heads_kv, 64)
    hq, hkv, d = heads
    p = fill_params(spec, resolved, frozenset(params or {}), hq, hkv)
    for nq in (seq_len, 1) if cache else (seq_len,):
        w = Workload(heads_q=hq, heads_kv=hkv, seq_q=nq, seq_kv=seq_len, head_dim=d, causal=True)
        if spec.shape(w, p).batch != w.batch:  # e.g. ConsistEdit's (source, target) pairs
            return f"{method} reshapes the batch (it pairs batch entries), a served model's batch is its prompts"
        if why := fit(entry, Backend.parse(backend), w, p)[2]:
            return why if nq == seq_len else f"{method} cannot decode against a KV cache: {why}"
    return None


def servable(config: Any = None, *, backend: str = "reference", cache: bool = False) -> dict[str, str | None]:
    """Every registered method → why it cannot serve a causal LM (see `why_not`), None when it can."""
    load_plugins()
    return {name: why_not(name, config, backend=backend, cache=cache) for name in METHODS.names()}


def implementation_name(method: str, backend: str = "reference", **params: Any) -> str:
    """Deterministic name `attnbench_<method>_<backend>_<hash of params>`."""
    digest = hashlib.sha1(params_json(params).encode()).hexdigest()[:8]
    return f"attnbench_{method}_{Backend.parse(backend).value}_{digest}"


def register(method: str, backend: str = "reference", **params: Any) -> str:
    """Register `method` with transformers' AttentionInterface (and `sdpa_mask` as its mask); return the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    fn = attention_fn(method, backend, **params)
    name = implementation_name(method, backend, **params)
    AttentionInterface.register(name, fn)
    AttentionMaskInterface.register(name, sdpa_mask)
    return name


def apply(model: Any, method: str, backend: str = "reference", **params: Any) -> Any:
    """Serve `method` in `model` (in place; returns it). ValueError(reason) when it cannot serve.

    A method that runs only on full sequences (no decode step against a KV cache, e.g. `moba`)
    turns the model's KV cache off (`config.use_cache` and `generation_config.use_cache`), so
    `generate` recomputes the whole sequence each step; applying a decoding method turns it back on.
    """
    if why := why_not(method, model.config, backend=backend, params=params):
        raise ValueError(why)
    model.set_attn_implementation(register(method, backend, **params))
    no_cache = why_not(method, model.config, backend=backend, params=params, cache=True) is not None
    gen = getattr(model, "generation_config", None)
    if no_cache or getattr(model, "_attnbench_no_cache", False):
        model.config.use_cache = not no_cache
        if gen is not None:
            gen.use_cache = not no_cache
    model._attnbench_no_cache = no_cache
    return model


def load(path: Any, method: str | None = None, backend: str = "reference", **params: Any) -> tuple[Any, Any]:
    """(model, tokenizer) from a local folder, in eval mode, with `method` applied when given."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if method is not None:
        apply(model, method, backend, **params)
    return model, tokenizer
