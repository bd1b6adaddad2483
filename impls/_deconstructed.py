"""Shared parts of the "Deconstructing Attention" variants (Xue, Moosavi, Aletras, 2025; arXiv 2510.11602).

Each controlled relaxation is its own registered method (`decon_approx`, `decon_nonapprox`,
`decon_mlp`, `decon_rnd_qk`, `decon_static_qk`); `hybrid_layers` interleaves one with standard
attention across the layers of a model. The paper's hybrid models (variant in the odd layers,
standard MHA in the even ones, Table 1) are registered as `decon_hybrid_<variant>`: the same layer
under another name, with `hybrid_spec`'s `layout`, so the proxies train the hybrid stack.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from attnbench.flops import dense_flops
from attnbench.impls.mdha import attention_step, proj_flops
from attnbench.registry import step
from attnbench.spec import AttentionSpec, Backend, FlopCount, Paper, Params, Workload

PAPER = Paper("Deconstructing Attention: Investigating Design Principles for Effective Language Modeling",
              2025, "2510.11602")

def source_qk_flops(batch_one: bool):
    """FLOPs `(w, params) -> FlopCount` of a Q/K-source layer: dense core + V/O projections over
    `B·N` tokens + Q/K projections over `N` (batch-1 source, `batch_one`) or `B·N` tokens."""

    def flops(w: Workload, params: Params) -> FlopCount:
        core = dense_flops(w)
        qk_rows = w.seq_q if batch_one else w.batch * w.seq_q
        extra = proj_flops(w, 2) + proj_flops(w, 2, rows=qk_rows)
        return FlopCount(useful=core.useful + extra, executed=core.useful + extra, softmax=core.softmax)

    return flops


HYBRID_PATTERNS = ("uniform", "alternate", "top", "middle", "bottom", "quarter", "first", "last",
                   "bilateral")


def hybrid_layers(n_layers: int, variant: str, pattern: str = "alternate", standard: str = "mha"
                  ) -> list[str]:
    """Per-layer method names of a hybrid model (layer 1 first).

    Patterns, for layers numbered 1…L (paper's 24-layer ranges in brackets):
    `uniform` variant everywhere; `alternate` variant in odd layers, standard in even (50%);
    `top` variant in (L/2, L] (13–24); `middle` in (L/4, 3L/4] (7–18); `bottom` in [1, L/4] (1–6);
    `quarter` standard only at every 4th layer (4, 8, …, 24); `first` / `last` variant only in the
    first / last layer; `bilateral` variant in the first and the last layer. The paper names the
    first/last/bilateral presets without ranges; those three are this harness's reading.
    Args:
        n_layers: L; variant: registered name of the relaxed method (e.g. "decon_nonapprox");
        pattern: one of HYBRID_PATTERNS; standard: method of the other layers.
    Returns:
        A list of L method names.
    """
    if n_layers < 1:
        raise ValueError(f"n_layers must be positive, got {n_layers}")
    rules = {
        "uniform": lambda i: True,
        "alternate": lambda i: i % 2 == 1,
        "top": lambda i: i > n_layers / 2,
        "middle": lambda i: n_layers / 4 < i <= 3 * n_layers / 4,
        "bottom": lambda i: i <= n_layers / 4,
        "quarter": lambda i: i % 4 != 0,
        "first": lambda i: i == 1,
        "last": lambda i: i == n_layers,
        "bilateral": lambda i: i in (1, n_layers),
    }
    if pattern not in rules:
        raise ValueError(f"unknown hybrid pattern {pattern!r}; valid: {', '.join(HYBRID_PATTERNS)}")
    return [variant if rules[pattern](i) else standard for i in range(1, n_layers + 1)]


def hybrid_spec(base: AttentionSpec, claims: tuple[str, ...]) -> AttentionSpec:
    """`base` renamed `decon_hybrid_<variant>` with the paper's hybrid plan (`alternate`: variant in
    odd layers 1, 3, …, MHA in even layers) as its `layout`; the single layer is the variant's."""
    name = "decon_hybrid_" + base.name.removeprefix("decon_")

    def layout(n_layers: int, params: Params) -> tuple[str, ...]:
        return tuple(hybrid_layers(n_layers, name, "alternate"))

    return dataclasses.replace(base, name=name, title=f"{base.title} — hybrid with MHA (odd layers)",
                               layout=layout, claims=claims)


def layer_seed(seed: int, layer: int) -> int:
    """Noise seed of layer `layer` (0-based): the layer index folded into the method's seed."""
    return seed + 1_000_003 * layer


class SourceQKAttention(nn.Module):
    """Softmax attention whose Q and K come from a source other than the layer input; V from `x`.

    `source="random"`: a fixed noise buffer `ε ~ N(0, σ²)` `[max_len, C]` (RndEmbQK; the paper passes
    ε through the preceding blocks, here the layer's own projections see it directly). Q/K are
    computed once with batch 1 and broadcast: the attention map is input-independent. A model can
    override it with `set_qk_source(h)` (e.g. FixedSeqQK's hidden states of a fixed text).
    `source="static"`: Q/K from the token embeddings bound with `set_qk_source(e [B, N, C])`
    (StaticEmbQK), or handed in per call as `forward(x, emb=e)` (the proxy model does, as
    `wants_embeddings` asks); with neither, the layer input stands for the embeddings (the layer
    is then a first block, where the two coincide).
    Per-layer noise: `set_layer_index(i)` redraws ε with `layer_seed(seed, i)` (the proxy model
    calls it), so the RndEmbQK layers of one model do not share one map.
    """

    def __init__(self, spec: AttentionSpec, d_model: int, n_heads: int, *, backend: Backend | str,
                 causal: bool, source: str, sigma: float = 1.0, max_len: int = 4096, seed: int = 0) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.causal, self.source = n_heads, d_model // n_heads, causal, source
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.seed, self.sigma, self.max_len = seed, sigma, max_len
        self.wants_embeddings = source == "static"
        noise = self._noise(seed, d_model) if source == "random" else None
        self.register_buffer("noise", noise)
        self.bound: torch.Tensor | None = None
        backend = Backend(backend)
        self.attend = attention_step if backend == Backend.REFERENCE else step(spec, backend)
        self.aux_loss = None

    def _noise(self, seed: int, d_model: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(1, self.max_len, d_model, generator=gen) * self.sigma

    @torch.no_grad()
    def set_layer_index(self, layer: int) -> None:
        """Redraw the noise for layer `layer` of a model (no-op for the static source)."""
        if self.noise is not None:
            self.noise.copy_(self._noise(layer_seed(self.seed, layer), self.noise.shape[-1]))

    def set_qk_source(self, h: torch.Tensor | None) -> None:
        """Bind the Q/K source `[1|B, N, C]` (None: back to the default: noise, or the layer input)."""
        self.bound = h

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(t.shape[0], t.shape[1], self.n_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        """`x [B, N, C]` → `[B, N, C]`; `emb [B, N, C]`: the embeddings Q/K come from (static)."""
        b, n, _ = x.shape
        src = emb if emb is not None else self.bound if self.bound is not None else self.noise
        src = x if src is None else src[:, :n].to(x.dtype)
        q, k = self._heads(self.q(src)), self._heads(self.k(src))
        if q.shape[0] != b:  # batch-1 source: one map for the whole batch
            q, k = q.expand(b, -1, -1, -1), k.expand(b, -1, -1, -1)
        o = self.attend(q, k, self._heads(self.v(x)), causal=self.causal)
        return self.out(o.transpose(1, 2).reshape(b, n, -1))
