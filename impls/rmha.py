"""Relative multi-head attention — "Transformer-XL: Attentive Language Models Beyond a Fixed-Length
Context" (Dai et al., 2019), arXiv 1901.02860. Logits `[(q_i + u)·k_j + q_i·P_{i−j} + b_{i−j}] / √D`.

Both position encodings of card A1 reduce to per-offset tables `P_win [2N−1, H, D]`, `b_win [2N−1, H]`:
`learned` (labml / RCMHA code: tables `P [2L, H, D]`, `b [2L, H]`) and `sinusoidal` (canonical
Transformer-XL: `P = W_R R_{i−j}`, `b = v·W_R R_{i−j}`). Transformer-XL memory (`mem_len`) is not
implemented: layers here see one segment.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attnbench.flops import SOFTMAX_FLOPS_PER_SCORE, causal_pairs, core_flops
from attnbench.impls.mdha import DepthwiseConv, conv_flops, proj_flops
from attnbench.ops import causal_mask, dense_attention
from attnbench.registry import register_method, step
from attnbench.spec import AttentionSpec, Backend, Capabilities, FlopCount, Paper, Params, Workload


def rel_flops(w: Workload, params: Params) -> FlopCount:
    """Content core `4·B·H·pairs·D` + positional `q·P` term.

    useful: `2·B·H·pairs·D` for the positional term; executed: `q·P_win` is computed for every
    query and all `2N−1` offsets. Plus Q/K/V/O projections `8·B·N·C²`, the sinusoidal table's
    `W_R R` (`2·(2N−1)·C²`) and, for RCMHA, the convs `2·k·3·B·N·C`.
    """
    pairs = causal_pairs(w.seq_q, w.seq_kv) if w.causal else w.seq_q * w.seq_kv
    core = core_flops(w, pairs)
    conv = conv_flops(w, params["kernel_size"]) if params.get("conv") else 0.0
    conv += proj_flops(w)
    if params["rel_kind"] == "sinusoidal":
        conv += proj_flops(w, 1, rows=2 * w.seq_kv - 1)
    useful = core + 2.0 * w.batch * w.heads_q * pairs * w.head_dim + conv
    executed = core + 2.0 * w.batch * w.heads_q * w.seq_q * (2 * w.seq_kv - 1) * w.head_dim + conv
    return FlopCount(useful=useful, executed=executed,
                     softmax=SOFTMAX_FLOPS_PER_SCORE * w.batch * w.heads_q * pairs)


def _check(w: Workload, params: Params) -> str | None:
    if w.seq_q != w.seq_kv:
        return "relative attention here is self-attention (Nq == Nk)"
    if params["rel_kind"] == "learned" and w.seq_q > params["max_len"]:
        return f"N={w.seq_q} exceeds the learned table (max_len={params['max_len']})"
    if params["rel_kind"] not in ("learned", "sinusoidal"):
        return f"unknown rel_kind {params['rel_kind']!r}; valid: learned, sinusoidal"
    return None


REL_DEFAULTS = {"rel_kind": "learned", "max_len": 4096, "init_std": 0.02}

SPEC = AttentionSpec(
    name="rmha",
    title="Relative multi-head attention (Transformer-XL)",
    paper=Paper("Transformer-XL: Attentive Language Models Beyond a Fixed-Length Context", 2019,
                "1901.02860"),
    family="positional",
    kind="layer",
    defaults=dict(REL_DEFAULTS),
    capabilities=Capabilities(causal=True, noncausal=True),
    flops=rel_flops,
    check=_check,
    claims=("Relative positions let attention reuse cached segments; better long-range LM perplexity.",),
)


def rel_logits(q: torch.Tensor, p_win: torch.Tensor, b_win: torch.Tensor) -> torch.Tensor:
    """Positional logits `q_i·P_{i−j} + b_{i−j}` by an explicit gather (unscaled).

    Args:
        q: `[B, H, N, D]`; p_win: `[2N−1, H, D]`, b_win: `[2N−1, H]`, row `r` = offset `r − (N−1)`.
    Returns:
        `[B, H, N, N]` in fp32 (fp64 for fp64 input).
    """
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    b, h, n, _ = q.shape
    bd = torch.einsum("bhid,rhd->bhir", q.to(acc), p_win.to(acc)) + b_win.to(acc).T[None, :, None, :]
    i = torch.arange(n, device=q.device)
    offset = (i[:, None] - i[None, :]) + n - 1  # [N, N]: table row of (i, j)
    return bd.gather(-1, offset.expand(b, h, n, n))


def rel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, u: torch.Tensor, p_win: torch.Tensor,
                  b_win: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
    """Reference relative attention step: `softmax(((q+u)·k + q·P + b)/√D) v`, `[B, H, N, D]` out."""
    bias = rel_logits(q, p_win, b_win) * q.shape[-1] ** -0.5
    mask = causal_mask(q.shape[-2], k.shape[-2], q.device) if causal else None
    return dense_attention(q + u[:, None, :].to(q.dtype), k, v, mask, bias)


def sinusoid(n: int, dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Transformer-XL sinusoids `R` for offsets `−(n−1)…n−1`: `[2n−1, dim]`."""
    pos = torch.arange(-(n - 1), n, device=device, dtype=torch.float32)
    inv = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    ang = pos[:, None] * inv[None, :]
    return torch.cat([ang.sin(), ang.cos()], dim=-1)


class RelativeMHA(nn.Module):
    """Transformer-XL relative attention layer; `conv=True` adds RCMHA's depthwise convs after Q/K/V.

    Q/K projections are bias-free, V has a bias (official code). `u`, `P`, `b` (or `v`, `W_R`) start
    as `N(0, init_std²)`; the official code zero-initialises them (`init_std=0` reproduces that).
    """

    def __init__(self, spec: AttentionSpec, d_model: int, n_heads: int, *, backend: Backend | str,
                 causal: bool, rel_kind: str, max_len: int, init_std: float, conv: bool = False,
                 kernel_size: int = 3, share_across_heads: bool = True) -> None:
        super().__init__()
        h, d = n_heads, d_model // n_heads
        self.n_heads, self.head_dim, self.causal, self.rel_kind = h, d, causal, rel_kind
        self.max_len = max_len
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=True)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.u = nn.Parameter(torch.randn(h, d) * init_std)
        if rel_kind == "learned":
            self.rel_p = nn.Parameter(torch.randn(2 * max_len, h, d) * init_std)
            self.rel_b = nn.Parameter(torch.randn(2 * max_len, h) * init_std)
        elif rel_kind == "sinusoidal":
            self.v_bias = nn.Parameter(torch.randn(h, d) * init_std)
            self.rel_proj = nn.Linear(d_model, d_model, bias=False)
        else:
            raise ValueError(f"unknown rel_kind {rel_kind!r}; valid: learned, sinusoidal")
        self.convs = nn.ModuleList(
            DepthwiseConv(h, d, kernel_size, share_across_heads=share_across_heads, causal=causal)
            for _ in range(3)) if conv else None
        backend = Backend(backend)
        self.attend = rel_attention if backend == Backend.REFERENCE else step(spec, backend)
        self.aux_loss = None

    def rel_tables(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`P_win [2n−1, H, D]` and `b_win [2n−1, H]` for offsets `−(n−1)…n−1`."""
        if self.rel_kind == "learned":
            if n > self.max_len:
                raise ValueError(f"N={n} exceeds max_len={self.max_len}")
            rows = torch.arange(-(n - 1), n, device=self.rel_p.device) + self.max_len
            return self.rel_p[rows], self.rel_b[rows]
        r = sinusoid(n, self.rel_proj.in_features, self.rel_proj.weight.device).to(self.rel_proj.weight.dtype)
        p_win = self.rel_proj(r).view(2 * n - 1, self.n_heads, self.head_dim)
        return p_win, torch.einsum("rhd,hd->rh", p_win, self.v_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = [self.q(x), self.k(x), self.v(x)]
        if self.convs is not None:
            qkv = [conv(t) for conv, t in zip(self.convs, qkv, strict=True)]
        q, k, v = (t.view(b, n, self.n_heads, self.head_dim).transpose(1, 2) for t in qkv)
        p_win, b_win = self.rel_tables(n)
        o = self.attend(q, k, v, self.u, p_win.to(x.dtype), b_win.to(x.dtype), causal=self.causal)
        return self.out(o.transpose(1, 2).reshape(b, n, -1))


@register_method(SPEC)
def rmha(d_model: int, n_heads: int, *, backend: Backend | str = Backend.REFERENCE, causal: bool = False,
         rel_kind: str = "learned", max_len: int = 4096, init_std: float = 0.02) -> RelativeMHA:
    """Build a Transformer-XL relative attention layer on `x [B, N, C]` (attention step by `backend`)."""
    return RelativeMHA(SPEC, d_model, n_heads, backend=backend, causal=causal, rel_kind=rel_kind,
                       max_len=max_len, init_std=init_std)
