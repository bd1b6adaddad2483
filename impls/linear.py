"""Linear attention — "Transformers are RNNs: Fast Autoregressive Transformers with Linear
Attention" (Katharopoulos et al., 2020), arXiv 2006.16236.

Softmax-free attention with a positive feature map φ (elu + 1):
`o_i = φ(q_i) Σ_j φ(k_j)ᵀ v_j / φ(q_i) Σ_j φ(k_j)ᵀ`, the sums over all j (non-causal) or over
j ≤ i + Nk − Nq (causal, bottom-right aligned). No `1/√D` scale (the normaliser makes it moot).
`feature_map="identity"` with `normalize=False` gives plain `(Q Kᵀ ⊙ M) V`, used by the tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnbench.ops import causal_mask
from attnbench.registry import register_method
from attnbench.spec import AttentionSpec, Capabilities, FlopCount, Paper, Params, Workload

FEATURE_MAPS = ("elu", "identity")


def phi(x: torch.Tensor, name: str) -> torch.Tensor:
    """φ(x) in fp32 (fp64 stays fp64): `elu(x) + 1` or the identity."""
    x = x if x.dtype == torch.float64 else x.float()
    if name == "elu":
        return F.elu(x) + 1.0
    if name == "identity":
        return x
    raise ValueError(f"linear: unknown feature_map {name!r}; valid: {', '.join(FEATURE_MAPS)}")


def grouped_features(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, name: str
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """φ(q) as `[B, Hkv, G, Nq, D]`, φ(k) and v as `[B, Hkv, 1, Nk, ·]` (query head h reads kv head h // G).

    Broadcasting over G shares each kv head's sums among its query heads without copying k, v.
    """
    qf = phi(q, name).unflatten(1, (k.shape[1], q.shape[1] // k.shape[1]))
    kf = phi(k, name).unsqueeze(2)
    return qf, kf, v.to(qf.dtype).unsqueeze(2)


def linear_flops(w: Workload, params: Params) -> FlopCount:
    """useful = 2·B·(Hq·Nq + Hkv·Nk)·D·Dv (= 4·B·H·N·D·Dv for MHA): build Σφ(k)vᵀ, read it per query.

    executed = the chunked form: per chunk of L queries, the masked L×L block (2·L²·(D + Dv)),
    the read of the carried state and the state update (2·L·D·Dv each), plus the prefix state
    of the Nk − Nq keys before the first query. Normaliser FLOPs (O(N·D)) are left out.
    """
    b, h, nq, nk, d = w.batch, w.heads_q, w.seq_q, w.seq_kv, w.head_dim
    useful = 2.0 * b * (h * nq + w.heads_kv * nk) * d * d
    if not w.causal:
        return FlopCount(useful=useful, executed=useful)
    chunk = min(params["chunk_size"], nq)
    padded = -(-nq // chunk) * chunk
    executed = b * (h * (4.0 * padded * chunk * d + 2.0 * padded * d * d)
                    + w.heads_kv * (2.0 * padded * d * d + 2.0 * (nk - nq) * d * d))
    return FlopCount(useful=useful, executed=executed)


def state_bytes(w: Workload, params: Params) -> float:
    """The recurrent state that replaces the KV cache: Σφ(k)vᵀ and Σφ(k) per kv head, constant in N."""
    return w.batch * w.heads_kv * w.head_dim * (w.head_dim + 1) * torch.finfo(w.torch_dtype).bits / 8


def check_linear(w: Workload, params: Params) -> str | None:
    """Why the params or shape cannot run, or None."""
    if params["feature_map"] not in FEATURE_MAPS:
        return f"linear: unknown feature_map {params['feature_map']!r}; valid: {', '.join(FEATURE_MAPS)}"
    chunk = params["chunk_size"]
    if not isinstance(chunk, int) or chunk < 1:
        return f"linear: chunk_size must be a positive integer, got {chunk!r}"
    if w.causal and w.seq_q > w.seq_kv:
        return (f"linear: causal needs seq_q <= seq_kv (a row with no key has no normaliser), "
                f"got {w.seq_q} > {w.seq_kv}")
    return None


SPEC = AttentionSpec(
    name="linear",
    title="Linear attention (elu + 1)",
    paper=Paper("Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention",
                2020, "2006.16236"),
    family="linear",
    defaults={"feature_map": "elu", "normalize": True, "chunk_size": 64},
    capabilities=Capabilities(gqa=True),
    flops=linear_flops,
    kv_cache_bytes=state_bytes,
    check=check_linear,
    claims=("O(N) time and constant memory per generated token; up to 4000× faster autoregressive "
            "generation than softmax attention at similar quality on image generation.",),
)


@register_method(SPEC)
def linear(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
           feature_map: str = "elu", normalize: bool = True, chunk_size: int = 64) -> torch.Tensor:
    """Reference: the quadratic form `A = φ(Q)φ(K)ᵀ ⊙ M`, `o = A V / A 1` (O(N²) memory).

    Args:
        q: `[B, Hq, Nq, D]`; k, v: `[B, Hkv, Nk, D]` (Hq divisible by Hkv).
        causal: mask `j ≤ i + Nk − Nq` (needs Nq ≤ Nk).
        feature_map: "elu" (φ = elu + 1) or "identity".
        normalize: divide by `A 1`; without it the output is `A V`.
        chunk_size: used by the chunked backend only; accepted here so every backend takes the same params.
    Returns:
        `[B, Hq, Nq, D]` in q's dtype.
    """
    qf, kf, vf = grouped_features(q, k, v, feature_map)
    a = qf @ kf.transpose(-1, -2)  # [B, Hkv, G, Nq, Nk]
    if causal:
        a = a * causal_mask(q.shape[-2], k.shape[-2], q.device)
    o = a @ vf
    if normalize:
        o = o / a.sum(-1, keepdim=True)
    return o.flatten(1, 2).to(q.dtype)

