"""Checkpoint conversions as in-place model transforms: GQA mean-pooling and DHA head fusion.

`to_gqa` (Ainslie et al., arXiv 2305.13245): each contiguous group of key/value projection heads is
mean-pooled into one head; the model keeps running with any attention implementation.

`to_dha` (Chen et al., arXiv 2406.06567, methods card §12): per layer, the key heads and, separately,
the value heads are clustered by the cosine similarity of their projection weights (agglomerative,
average linkage) and each cluster is fused by averaging (the card's uniform-ω initialisation). The
paper's learned fusion weights, Augmented-Lagrangian search and continued pre-training are not done.
Design: `k_proj` / `v_proj` shrink to the n_K / n_V fused heads (so the KV cache really holds
`(n_K + n_V)·d` per token), and each attention module carries its decoupled maps as
`attnbench_kmap` / `attnbench_vmap` (query head → fused key / value head). Those maps are honoured
only by attnbench's attention functions (`attnbench.hf.apply`), which `to_dha` installs (`mha` by
default; any servable method can be applied afterwards); sdpa/eager would misread the layout, and the
config does not describe the maps, so a DHA model is an in-memory model (not `save_pretrained`-able).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Every Llama-style attention module of `model` (has q/k/v projections and `head_dim`)."""
    return [m for m in model.modules() if all(hasattr(m, a) for a in ("q_proj", "k_proj", "v_proj", "head_dim"))]


def _text_config(model: nn.Module) -> Any:
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def _per_head(linear: nn.Linear, head_dim: int) -> torch.Tensor:
    """`[n, d·E (+ d)]`: each output head's weight rows (and bias) flattened."""
    w = linear.weight.detach().unflatten(0, (-1, head_dim))
    parts = [w.flatten(1)]
    if linear.bias is not None:
        parts.append(linear.bias.detach().unflatten(0, (-1, head_dim)))
    return torch.cat(parts, 1)


@torch.no_grad()
def fused_linear(linear: nn.Linear, groups: Sequence[Sequence[int]], head_dim: int) -> nn.Linear:
    """A projection whose output head j is the mean of `linear`'s heads in `groups[j]` (weights and bias)."""
    w = linear.weight.unflatten(0, (-1, head_dim))
    out = nn.Linear(linear.in_features, len(groups) * head_dim, bias=linear.bias is not None,
                    device=w.device, dtype=w.dtype)
    out.weight.copy_(torch.stack([w[list(g)].mean(0) for g in groups]).flatten(0, 1))
    if linear.bias is not None:
        b = linear.bias.unflatten(0, (-1, head_dim))
        out.bias.copy_(torch.stack([b[list(g)].mean(0) for g in groups]).flatten())
    return out


def similarity_groups(rows: torch.Tensor, n_groups: int) -> list[list[int]]:
    """Agglomerative clustering (average linkage on cosine similarity) of `rows [n, F]` into `n_groups`.

    Deterministic; groups are sorted and ordered by their first member, so `n_groups == n` is the identity.
    """
    n = rows.shape[0]
    if not 1 <= n_groups <= n:
        raise ValueError(f"cannot cluster {n} heads into {n_groups} groups")
    x = nn.functional.normalize(rows.double().flatten(1), dim=1)
    sim = x @ x.T
    groups = [[i] for i in range(n)]
    while len(groups) > n_groups:
        pairs = [(a, b) for a in range(len(groups)) for b in range(a + 1, len(groups))]
        a, b = max(pairs, key=lambda ab: float(sim[groups[ab[0]]][:, groups[ab[1]]].mean()))
        groups[a] = sorted(groups[a] + groups.pop(b))
    return sorted(groups)


def _set_grouping(model: nn.Module, modules: list[nn.Module], kv_heads: int) -> None:
    heads = _text_config(model).num_attention_heads
    for m in modules:
        m.num_key_value_groups = heads // kv_heads
        if hasattr(m, "num_key_value_heads"):
            m.num_key_value_heads = kv_heads
    _text_config(model).num_key_value_heads = kv_heads


def to_gqa(model: nn.Module, kv_heads: int) -> nn.Module:
    """Mean-pool each contiguous group of key/value heads into `kv_heads` heads (GQA's conversion), in place.

    `kv_heads` must divide the current kv heads; equal to them is the identity, 1 gives MQA. Updates
    `k_proj` / `v_proj` (weights and biases), `config.num_key_value_heads` and each module's grouping.
    """
    modules = attention_modules(model)
    if not modules:
        raise ValueError("to_gqa: the model has no Llama-style attention modules (q_proj/k_proj/v_proj)")
    heads = _text_config(model).num_attention_heads
    if kv_heads < 1 or heads % kv_heads:
        raise ValueError(f"to_gqa: {heads} query heads cannot be grouped into {kv_heads} kv heads")
    for m in modules:
        if hasattr(m, "attnbench_kmap"):
            raise ValueError("to_gqa: the model has DHA (decoupled) kv heads; convert the original checkpoint")
        cur = m.k_proj.out_features // m.head_dim
        if cur % kv_heads:
            raise ValueError(f"to_gqa: {cur} kv heads cannot be mean-pooled into {kv_heads}")
        r = cur // kv_heads
        groups = [list(range(j * r, (j + 1) * r)) for j in range(kv_heads)]
        m.k_proj = fused_linear(m.k_proj, groups, m.head_dim)
        m.v_proj = fused_linear(m.v_proj, groups, m.head_dim)
    _set_grouping(model, modules, kv_heads)
    return model


def to_dha(model: nn.Module, kv_heads: int, v_heads: int | None = None, *, method: str = "mha",
           backend: str = "reference", **params: Any) -> nn.Module:
    """Decoupled-head attention from a checkpoint, in place: `kv_heads` key heads and `v_heads` value heads.

    Per layer, the source key heads are clustered by weight similarity into `kv_heads` groups and the
    value heads, independently, into `v_heads` (default `kv_heads`) groups; each group is fused by the
    mean of its heads (uniform ω; the paper's learned ω and continued pre-training are not done). The
    model then serves `method` through attnbench (see the module doc). One head per group (`kv_heads`
    = `v_heads` = current kv heads) reproduces the source model.
    """
    from attnbench.hf.serve import apply

    modules = attention_modules(model)
    if not modules:
        raise ValueError("to_dha: the model has no Llama-style attention modules (q_proj/k_proj/v_proj)")
    heads = _text_config(model).num_attention_heads
    v_heads = kv_heads if v_heads is None else v_heads
    for m in modules:
        d = m.head_dim
        n_k, n_v = m.k_proj.out_features // d, m.v_proj.out_features // d
        g = heads // n_k
        src_k = getattr(m, "attnbench_kmap", None) or tuple(h // g for h in range(heads))
        src_v = getattr(m, "attnbench_vmap", None) or tuple(h // (heads // n_v) for h in range(heads))
        maps = []
        for proj, n, src, name in ((m.k_proj, kv_heads, src_k, "k_proj"), (m.v_proj, v_heads, src_v, "v_proj")):
            groups = similarity_groups(_per_head(proj, d), n)
            label = {i: j for j, grp in enumerate(groups) for i in grp}
            setattr(m, name, fused_linear(proj, groups, d))
            maps.append(tuple(label[s] for s in src))
        m.attnbench_kmap, m.attnbench_vmap = maps
    return apply(model, method, backend, **params)
