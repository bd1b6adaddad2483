"""Compressed Convolutional Attention (CCA) — Zyphra, arXiv 2510.04476.

Q, K, V are down-projected to a latent of `E/C` channels and the whole attention runs there;
causal convolutions on `[q|k]`, a q–k mean residual, a value shift and L2-normalised q/k with a
per-kv-head temperature restore expressivity. `ccgqa` reuses `CCAttention` with kv-head sharing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.flops import SOFTMAX_FLOPS_PER_SCORE, causal_pairs
from attnbench.ops import causal_mask, dense_attention
from attnbench.registry import register_method, step
from attnbench.rope import rotary
from attnbench.spec import AttentionSpec, Backend, Capabilities, FlopCount, Paper, Params, Workload

PAPER = Paper("Compressed Convolutional Attention: Efficient Attention in a Compressed Latent Space",
              2025, "2510.04476")
FEATURES = ("convs", "mean_residual", "value_shift", "qk_norm")


def latent_heads(w: Workload, params: Params) -> tuple[int, int]:
    """(H_q, H_kv) of the latent attention: H_q = Hq / C, H_kv = H_q / groups."""
    hq = w.heads_q // params["compression"]
    return hq, max(hq // params.get("groups", 1), 1)


def check(w: Workload, params: Params) -> str | None:
    c, g = params["compression"], params.get("groups", 1)
    if w.heads_q % c:
        return f"heads {w.heads_q} not divisible by compression {c}"
    hq = w.heads_q // c
    if hq % g:
        return f"latent query heads {hq} not divisible by groups {g}"
    if params["value_shift"] and (hq // g) * w.head_dim % 2:
        return "value shift needs an even latent kv width"
    return None


def cca_flops(w: Workload, params: Params) -> FlopCount:
    """Card §6: projections 2SE(2ẽ_q+2ẽ_kv) + convs 2S(ẽ_q+ẽ_kv)(k0+d_h·k1) + core 4·pairs·ẽ_q."""
    hq, hkv = latent_heads(w, params)
    e, d, s = w.d_model, w.head_dim, w.seq_q
    eq, ekv = hq * d, hkv * d
    proj = 2.0 * s * e * (2 * eq + 2 * ekv)
    taps = params["kernel_dw"] + d * params["kernel_grouped"]
    conv = 2.0 * s * (eq + ekv) * taps if params["convs"] else 0.0
    pairs = causal_pairs(s, s) if w.causal else s * s
    core = 4.0 * pairs * eq
    useful = w.batch * (proj + conv + core)
    return FlopCount(useful=useful, executed=useful, softmax=SOFTMAX_FLOPS_PER_SCORE * w.batch * hq * pairs)


def cca_kv_cache_bytes(w: Workload, params: Params) -> float:
    """Card §6: 2·ẽ_kv per token, plus per sequence the conv state and one E-vector (value shift)."""
    hq, hkv = latent_heads(w, params)
    eq, ekv = hq * w.head_dim, hkv * w.head_dim
    per_seq = 2 * ekv * w.seq_kv
    if params["convs"]:
        per_seq += (params["kernel_dw"] + params["kernel_grouped"] - 2) * (eq + ekv)
    if params["value_shift"]:
        per_seq += w.d_model
    return float(w.batch * per_seq * torch.finfo(w.torch_dtype).bits // 8)


def make_spec(name: str, title: str, groups: int | None) -> AttentionSpec:
    """The CCA spec, or the CCGQA spec when `groups` (query heads per kv head) is given."""
    defaults: dict[str, Any] = {"compression": 2, "kernel_dw": 2, "kernel_grouped": 2, "convs": True,
                                "mean_residual": True, "value_shift": True, "qk_norm": True}
    if groups is not None:
        defaults["groups"] = groups
    return AttentionSpec(
        name=name, title=title, paper=PAPER, family="compressed", kind="layer", defaults=defaults,
        # gqa: CCGQA shares latent kv heads (a grouped workload is one it can run)
        capabilities=Capabilities(causal=True, noncausal=True, gqa=groups is not None, dims=(1,)),
        flops=cca_flops, kv_cache_bytes=cca_kv_cache_bytes, check=check,
        claims=("CCGQA beats GQA and MLA at equal KV compression; 8× KV compression with no loss vs "
                "MHA (MoE).", "Fused H100 kernel ≈1.7× faster prefill at 16k vs MHA (secondary summary)."),
    )


SPEC = make_spec("cca", "Compressed convolutional attention", None)


def latent_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False
                     ) -> torch.Tensor:
    """Reference step: (causal) GQA softmax attention in the latent, `[B, H, N, d_h]` in and out."""
    mask = causal_mask(q.shape[-2], k.shape[-2], q.device) if causal else None
    return dense_attention(q, k, v, mask)


@dataclass
class CCACache:
    """Decode state: K/V per token, the last `k0+k1-2` pre-conv `[q̃|k̃]` rows and the previous x."""

    k: torch.Tensor  # [B, H_kv, T, d_h]
    v: torch.Tensor  # [B, H_kv, T, d_h]
    conv_state: torch.Tensor  # [B, k0+k1-2, ẽ_q+ẽ_kv]
    x_prev: torch.Tensor  # [B, E]

    def nbytes(self, *, value_shift: bool = True) -> int:
        ts = (self.k, self.v, self.conv_state) + ((self.x_prev,) if value_shift else ())
        return sum(t.numel() * t.element_size() for t in ts)


class CCAttention(nn.Module):
    """CCA / CCGQA layer on `x [B, N, E]`; the latent attention step is dispatched by backend.

    Args:
        d_model: E. n_heads: heads of the uncompressed model (d_h = E / n_heads).
        compression: C; the latent has H_q = n_heads / C query heads of width d_h.
        groups: query heads per kv head (1 = CCA). kernel_dw, kernel_grouped: k0, k1.
        convs, mean_residual, value_shift, qk_norm: the card's features, each switchable.
    """

    def __init__(self, spec: AttentionSpec, d_model: int, n_heads: int, *, backend: Backend | str,
                 causal: bool = False, compression: int = 2, groups: int = 1, kernel_dw: int = 2,
                 kernel_grouped: int = 2, convs: bool = True, mean_residual: bool = True,
                 value_shift: bool = True, qk_norm: bool = True, rope: bool = False) -> None:
        super().__init__()
        self.rope = rope
        if d_model % n_heads or n_heads % compression or (n_heads // compression) % groups:
            raise ValueError(f"{spec.name}: need n_heads | d_model, C | n_heads and groups | n_heads/C "
                             f"(d_model={d_model}, n_heads={n_heads}, C={compression}, groups={groups})")
        self.causal, self.backend = causal, Backend(backend)
        self.d_h = d_model // n_heads
        self.h_q = n_heads // compression
        self.h_kv = self.h_q // groups
        self.e_q, self.e_kv = self.h_q * self.d_h, self.h_kv * self.d_h
        if value_shift and self.e_kv % 2:
            raise ValueError(f"{spec.name}: value shift needs an even latent kv width, got {self.e_kv}")
        self.convs, self.mean_residual = convs, mean_residual
        self.value_shift, self.qk_norm = value_shift, qk_norm
        self.k0, self.k1 = kernel_dw, kernel_grouped
        self.q = nn.Linear(d_model, self.e_q, bias=False)
        self.k = nn.Linear(d_model, self.e_kv, bias=False)
        self.v = nn.Linear(d_model, self.e_kv, bias=False)  # rows [:ẽ_kv/2] read x_t, the rest x_{t-1}
        self.o = nn.Linear(self.e_q, d_model, bias=False)
        width = self.e_q + self.e_kv
        self.conv_dw = nn.Conv1d(width, width, kernel_dw, groups=width)
        self.conv_grouped = nn.Conv1d(width, width, kernel_grouped, groups=self.h_q + self.h_kv)
        self.temperature = nn.Parameter(torch.ones(self.h_kv))
        self.aux_loss: torch.Tensor | None = None
        self.attend = latent_attention if self.backend is Backend.REFERENCE else step(spec, self.backend)

    def _heads(self, t: torch.Tensor, h: int) -> torch.Tensor:
        return t.unflatten(-1, (h, self.d_h)).transpose(1, 2)  # [B, N, h·d] -> [B, h, N, d]

    def _values(self, x: torch.Tensor, x_prev: torch.Tensor) -> torch.Tensor:
        if not self.value_shift:
            return self.v(x)
        half = self.e_kv // 2
        return torch.cat([F.linear(x, self.v.weight[:half]), F.linear(x_prev, self.v.weight[half:])], -1)

    def _qk(self, qt: torch.Tensor, kt: torch.Tensor, conv_in: torch.Tensor, offset: int = 0
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """q̃ `[B,N,ẽ_q]`, k̃ `[B,N,ẽ_kv]`, left-padded conv input → q `[B,H_q,N,d]`, k `[B,H_kv,N,d]`
        (rotated for positions offset… when the layer has RoPE)."""
        if self.convs:
            p = self.conv_grouped(self.conv_dw(conv_in.transpose(1, 2))).transpose(1, 2)
            q, k = p.split([self.e_q, self.e_kv], dim=-1)
        else:
            q, k = qt, kt
        q, k = self._heads(q, self.h_q), self._heads(k, self.h_kv)
        if self.mean_residual:
            g = self.h_q // self.h_kv
            m_q = (self._heads(qt, self.h_q) + self._heads(kt, self.h_kv).repeat_interleave(g, 1)) / 2
            q = q + m_q
            k = k + m_q.unflatten(1, (self.h_kv, g)).mean(2)
        if self.qk_norm:
            scale = self.d_h ** 0.5
            q = scale * F.normalize(q, dim=-1)
            k = scale * F.normalize(k, dim=-1) * self.temperature[:, None, None].to(k.dtype)
        if self.rope:
            q, k = rotary(q, offset), rotary(k, offset)
        return q, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x [B, N, E]` → `[B, N, E]`."""
        qt, kt = self.q(x), self.k(x)
        conv_in = F.pad(torch.cat([qt, kt], -1), (0, 0, self.k0 + self.k1 - 2, 0))
        q, k = self._qk(qt, kt, conv_in)
        v = self._heads(self._values(x, F.pad(x, (0, 0, 1, -1))), self.h_kv)
        o = self.attend(q, k, v, causal=self.causal)
        return self.o(o.transpose(1, 2).flatten(2))

    def empty_cache(self, batch: int, *, dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None) -> CCACache:
        """Decode state before the first token (zero conv state and zero previous x)."""
        kw = {"dtype": dtype or self.q.weight.dtype, "device": device or self.q.weight.device}
        return CCACache(k=torch.zeros(batch, self.h_kv, 0, self.d_h, **kw),
                        v=torch.zeros(batch, self.h_kv, 0, self.d_h, **kw),
                        conv_state=torch.zeros(batch, self.k0 + self.k1 - 2, self.e_q + self.e_kv, **kw),
                        x_prev=torch.zeros(batch, self.q.in_features, **kw))

    @torch.no_grad()
    def decode(self, x: torch.Tensor, cache: CCACache) -> tuple[torch.Tensor, CCACache]:
        """One causal decode step: `x [B, 1, E]` → `[B, 1, E]` and the updated cache."""
        qt, kt = self.q(x), self.k(x)
        window = torch.cat([cache.conv_state, torch.cat([qt, kt], -1)], 1)
        q, k = self._qk(qt, kt, window, offset=cache.k.shape[2])
        v = self._heads(self._values(x, cache.x_prev[:, None]), self.h_kv)
        cache = CCACache(k=torch.cat([cache.k, k], 2), v=torch.cat([cache.v, v], 2),
                         conv_state=window[:, 1:], x_prev=x[:, 0])
        o = latent_attention(q, cache.k, cache.v, causal=False)  # the new token sees the whole cache
        return self.o(o.transpose(1, 2).flatten(2)), cache


@register_method(SPEC)
def cca(d_model: int, n_heads: int, *, backend: Backend | str, causal: bool = False, compression: int = 2,
        kernel_dw: int = 2, kernel_grouped: int = 2, convs: bool = True, mean_residual: bool = True,
        value_shift: bool = True, qk_norm: bool = True, rope: bool = False) -> CCAttention:
    """Build a CCA layer (`groups=1`: every latent query head has its own kv head); `rope`
    rotates the latent q/k by position."""
    return CCAttention(SPEC, d_model, n_heads, backend=backend, causal=causal, compression=compression,
                       kernel_dw=kernel_dw, kernel_grouped=kernel_grouped, convs=convs,
                       mean_residual=mean_residual, value_shift=value_shift, qk_norm=qk_norm, rope=rope)
