"""Relative convolutional multi-head attention — "RCMHA: Relative Convolutional Multi-Head Attention
for Natural Language Modelling" (Sugiharto et al., 2023), arXiv 2308.03429. Transformer-XL relative
attention whose Q/K/V projections are each followed by a 3-tap depthwise conv over positions
(kernel shared across heads, as in the official code).

Transformer-XL memory (card A1): the layer reads its input in segments of `seg_len` tokens; each
segment attends to itself and to the last `mem_len` layer inputs before it, cached with a stop-
gradient (`h̃ = [SG(mem); h]`, keys/values recomputed from the cache with the current weights, the
relative offsets spanning the memory). In a causal model that is exactly segment recurrence over
the sequence. The official run uses `seq_len 2, mem_len 32`; segments of 2 tokens make N/2
sequential steps, so the default here is `seg_len 16, mem_len 32` (a deviation, in the options).
`mem_len 0` or `seg_len 0` (one segment) is the memoryless layer; `RecurrentRCMHA.segment` steps
one segment at a time for streaming.
"""

from __future__ import annotations

import torch

from attnbench.impls.rmha import REL_DEFAULTS, RelativeMHA, _check, rel_flops
from attnbench.registry import register_method
from attnbench.spec import AttentionSpec, Backend, Capabilities, FlopCount, Paper, Params, Workload


def segments(n: int, seg_len: int, mem_len: int) -> list[tuple[int, int]]:
    """(memory length, segment length) of each segment of an `n`-token input."""
    if not seg_len or seg_len >= n:
        return [(0, n)]
    out, seen = [], 0
    for s in range(0, n, seg_len):
        out.append((min(mem_len, seen), min(seg_len, n - s)))
        seen = s + seg_len
    return out


def rcmha_flops(w: Workload, params: Params) -> FlopCount:
    """`rel_flops` per segment on its `m + s` tokens (memory rows are computed and dropped:
    executed), of which the segment's `s` query rows are useful (scaled by `s / (m + s)`)."""
    useful = executed = softmax = 0.0
    for m, s in segments(w.seq_q, params["seg_len"], params["mem_len"]):
        f = rel_flops(w.replace(seq_q=m + s, seq_kv=m + s), params)
        useful += f.useful * s / (m + s)
        executed += f.executed if f.executed is not None else f.useful
        softmax += f.softmax * s / (m + s)
    return FlopCount(useful=useful, executed=executed, softmax=softmax)


def _check_mem(w: Workload, params: Params) -> str | None:
    if params["mem_len"] < 0 or params["seg_len"] < 0:
        return "mem_len and seg_len must be ≥ 0"
    return _check(w, params)

SPEC = AttentionSpec(
    name="rcmha",
    title="Relative convolutional multi-head attention",
    paper=Paper("RCMHA: Relative Convolutional Multi-Head Attention for Natural Language Modelling",
                2023, "2308.03429"),
    family="positional",
    kind="layer",
    defaults={**REL_DEFAULTS, "conv": True, "kernel_size": 3, "share_across_heads": True, "mem_len": 32,
              "seg_len": 16},
    capabilities=Capabilities(causal=True, noncausal=True),
    flops=rcmha_flops,
    check=_check_mem,
    claims=("Next-token accuracy 0.572 vs MHA/MDHA/RMHA on char-level LM; lower memory than RMHA "
            "(the abstract's memory ranking is garbled: unverified).",),
)


class RecurrentRCMHA(RelativeMHA):
    """RCMHA with Transformer-XL segment recurrence (`mem_len` cached inputs, `seg_len` tokens)."""

    def __init__(self, *args, mem_len: int = 32, seg_len: int = 16, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if mem_len < 0 or seg_len < 0:
            raise ValueError(f"rcmha: mem_len={mem_len} and seg_len={seg_len} must be ≥ 0")
        self.mem_len, self.seg_len = mem_len, seg_len

    def segment(self, x: torch.Tensor, mem: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One segment `x [B, S, C]` after the cached inputs `mem [B, M, C]` (or None).

        Returns the segment's output `[B, S, C]` and the next memory: the last `mem_len` rows of
        `[mem; x]`, detached (stop-gradient), or None when `mem_len` is 0.
        """
        full = x if mem is None else torch.cat([mem.to(x.dtype), x], 1)
        y = super().forward(full)[:, full.shape[1] - x.shape[1]:]
        nxt = full[:, -self.mem_len:].detach() if self.mem_len else None
        return y, nxt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x [B, N, C]` → `[B, N, C]`, segment by segment."""
        if not self.seg_len or self.seg_len >= x.shape[1]:
            return super().forward(x)
        outs, mem = [], None
        for s in range(0, x.shape[1], self.seg_len):
            y, mem = self.segment(x[:, s:s + self.seg_len], mem)
            outs.append(y)
        return torch.cat(outs, 1)


@register_method(SPEC)
def rcmha(d_model: int, n_heads: int, *, backend: Backend | str = Backend.REFERENCE, causal: bool = False,
          rel_kind: str = "learned", max_len: int = 4096, init_std: float = 0.02, conv: bool = True,
          kernel_size: int = 3, share_across_heads: bool = True, mem_len: int = 32, seg_len: int = 16
          ) -> RecurrentRCMHA:
    """Build an RCMHA layer on `x [B, N, C]`; `conv=False` is RMHA, `mem_len=0` memoryless
    (attention step by `backend`)."""
    return RecurrentRCMHA(SPEC, d_model, n_heads, backend=backend, causal=causal, rel_kind=rel_kind,
                          max_len=max_len, init_std=init_std, conv=conv, kernel_size=kernel_size,
                          share_across_heads=share_across_heads, mem_len=mem_len, seg_len=seg_len)
