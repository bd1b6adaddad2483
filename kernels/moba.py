"""MoBA fused backends, and the block-sparse helpers DMA, VMoBA and PARO reuse.

- `native`: the official two-branch scheme in torch ops: a causal self-block branch plus, per KV
  block, attention of exactly the queries that selected it; partial results merged by LSE. Work
  is ~ N·k·block·D instead of N²·D/2. Routing runs inside the call.
- `sdpa`: the same scheme with every branch in PyTorch's fused CPU SDPA kernel, which returns the
  LSE (forward only: that LSE carries no gradient).
- `flex` / `flex_compiled`: FlexAttention with the selection captured in `mask_mod` and a
  BlockMask built from the block-OR of the token mask; router and mask build run inside every
  call (routing depends on the input), only compilation is setup.

Executed FLOPs per backend (`Impl.flops`, on the seeded input `make_qkv(w, seed=0)` the suites
time): the gathered branches compute, per KV block, the largest number of queries any (batch,
head) routed to it (the padding of `gathered_block_attention`), plus the self blocks in full;
eager flex computes every score; compiled flex visits the BlockMask's 128×128 tiles. Routing
(block means, gate, top-k) is in useful and executed alike.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from attnbench.flops import (
    SOFTMAX_FLOPS_PER_SCORE,
    all_pairs_flops,
    block_routing_flops,
    mask_flops,
    with_routing,
)
from attnbench.impls.moba import SPEC, moba_mask, moba_select
from attnbench.inputs import make_qkv
from attnbench.kernels.flex import (  # noqa: F401  (re-exported for the methods that reuse them)
    FlexPlan,
    block_mask_from_dense,
    permute_tokens,
    register_flex,
)
from attnbench.ops import flex_can_run  # noqa: F401
from attnbench.registry import register_backend
from attnbench.spec import Backend, FlopCount, Params, Workload

_NEG = -1e30  # finite "minus infinity" for LSE merging (keeps gradients NaN-free)


Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, bool], tuple[torch.Tensor, torch.Tensor]]


def attend_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of pre-scaled `q` returning (out, lse) in torch ops (differentiable)."""
    s = q @ k.transpose(-1, -2)
    if causal:
        s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril(), float("-inf"))
    m = s.amax(dim=-1, keepdim=True)
    p = (s - m).exp_()
    denom = p.sum(dim=-1, keepdim=True)
    return (p @ v) / denom, (m + denom.log()).squeeze(-1)


def attend_sdpa_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) from PyTorch's fused CPU flash kernel (its lse output has no gradient)."""
    squeeze = q.dim() == 3
    if squeeze:
        q, k, v = q[:, None], k[:, None], v[:, None]
    o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=1.0)
    return (o[:, 0], lse[:, 0]) if squeeze else (o, lse)


def sdpa_lse_can_run(w: Workload, params: Params) -> str | None:
    if w.device != "cpu":
        return "the LSE-returning SDPA op is wired for CPU only (aten flash_attention_for_cpu)"
    if w.mode != "fwd":
        return "the fused SDPA op's lse output has no gradient, so the LSE merge has no backward"
    return None


def gathered_block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sel: torch.Tensor,
                             block: int, *, causal_self: bool, attend: Attend = attend_math) -> torch.Tensor:
    """Softmax over the union of selected key blocks, computed per KV block on its queries only.

    Args:
        q, k, v: `[B, H, N, D]` (same N for q and k).
        sel: `[B, H, N, n_blocks]` bool, blocks a query attends to in full (non-causally).
        causal_self: also attend to the own block under a causal mask (MoBA's self branch);
            `sel` must then exclude the own block.
        attend: the dense kernel run on each branch, returning (out, lse).
    Returns:
        `[B, H, N, D]` in q's dtype. Partial results are merged by log-sum-exp.
    """
    b, h, n, d = q.shape
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf = (q.to(acc) * d ** -0.5).reshape(b * h, n, d)  # pre-scaled once: scores need no extra pass
    kf, vf = (t.to(acc).reshape(b * h, n, d) for t in (k, v))
    sel = sel.reshape(b * h, n, -1)
    nblk = sel.shape[-1]
    outs, lses, rows = [], [], []  # partial results: one entry per (query, attended block)
    if causal_self:  # own block, causal: [BH, nblk, block, D] tiles
        pad = nblk * block - n
        qb, kb, vb = (torch.nn.functional.pad(t, (0, 0, 0, pad)).unflatten(1, (nblk, block))
                      for t in (qf, kf, vf))
        o_self, lse_self = attend(qb, kb, vb, True)
        outs.append(o_self.flatten(1, 2)[:, :n])
        lses.append(lse_self.flatten(1, 2)[:, :n])
        rows.append(torch.arange(n, device=q.device).expand(b * h, n))
    for i in range(nblk):
        sel_i = sel[..., i]
        counts = sel_i.sum(-1)
        m = int(counts.max())
        if m == 0:
            continue
        order = torch.argsort(sel_i.to(torch.int8), dim=-1, descending=True, stable=True)[:, :m]
        valid = torch.arange(m, device=q.device)[None, :] < counts[:, None]
        q_g = qf.gather(1, order[..., None].expand(-1, -1, d))
        o_i, lse_i = attend(q_g, kf[:, i * block:(i + 1) * block], vf[:, i * block:(i + 1) * block], False)
        outs.append(o_i)
        lses.append(torch.where(valid, lse_i, _NEG))
        rows.append(torch.where(valid, order, n))  # padded rows go to a sink row, dropped below
    o_all, lse_all, row_all = torch.cat(outs, 1), torch.cat(lses, 1), torch.cat(rows, 1)
    top = lse_all.new_full((b * h, n + 1), _NEG).scatter_reduce(1, row_all, lse_all.detach(), "amax")
    wgt = torch.exp(lse_all - top.gather(1, row_all))  # merge weights exp(lse - max lse of the row)
    num = o_all.new_zeros(b * h, n + 1, d).scatter_add(1, row_all[..., None].expand(-1, -1, d),
                                                      o_all * wgt[..., None])
    den = wgt.new_zeros(b * h, n + 1).scatter_add(1, row_all, wgt)
    return (num[:, :n] / den[:, :n, None]).reshape(b, h, n, d).to(q.dtype)


def gathered_pairs(sel: torch.Tensor, block: int, *, causal_self: bool) -> float:
    """Score entries `gathered_block_attention` computes for `sel [B, H, N, n_blocks]`.

    Per KV block, every (batch, head) is padded to the largest number of queries any of them
    routed there; with `causal_self`, each own block is computed in full (block², then masked).
    """
    bh, n, nblk = sel.shape[0] * sel.shape[1], sel.shape[2], sel.shape[3]
    per_block = sel.reshape(bh, n, nblk).sum(1).amax(0)  # [n_blocks]
    lengths = torch.tensor([min(block, n - i * block) for i in range(nblk)], dtype=torch.float64)
    total = float((per_block.double() * lengths).sum()) * bh
    return total + (bh * nblk * block * block if causal_self else 0.0)


def _history(q: torch.Tensor, k: torch.Tensor, block_size: int, topk: int) -> torch.Tensor:
    sel = moba_select(q, k, block_size=block_size, topk=topk)
    own = torch.arange(q.shape[2], device=q.device) // block_size
    return sel & (torch.arange(sel.shape[-1], device=q.device)[None, :] != own[:, None])


def _moba_two_branch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, block_size: int,
                     topk: int, attend: Attend) -> torch.Tensor:
    if not causal:
        raise ValueError("moba is causal only")
    history = _history(q, k, block_size, topk)
    return gathered_block_attention(q, k, v, history, block_size, causal_self=True, attend=attend)


def _seeded(w: Workload) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return make_qkv(w.replace(dtype="float32"), seed=0, device="cpu")


def gathered_flops(w: Workload, params: Params) -> FlopCount:
    """Native / SDPA two-branch MoBA: gathered entries (see module docstring) + routing."""
    q, k, _ = _seeded(w)
    pairs = gathered_pairs(_history(q, k, params["block_size"], params["topk"]), params["block_size"],
                           causal_self=True)
    routing = block_routing_flops(w, params["block_size"])
    return FlopCount(useful=SPEC.flops(w, params).useful, executed=4.0 * pairs * w.head_dim + routing,
                     softmax=SOFTMAX_FLOPS_PER_SCORE * pairs)


def _mask(w: Workload, params: Params) -> torch.Tensor:
    q, k, _ = _seeded(w)
    return moba_mask(moba_select(q, k, block_size=params["block_size"], topk=params["topk"]), params["block_size"])


def eager_flex_flops(w: Workload, params: Params) -> FlopCount:
    fc = SPEC.flops(w, params)
    return all_pairs_flops(w, fc.useful - block_routing_flops(w, params["block_size"]),
                           block_routing_flops(w, params["block_size"]))


def compiled_flex_flops(w: Workload, params: Params) -> FlopCount:
    routing = block_routing_flops(w, params["block_size"])
    return with_routing(mask_flops(w, _mask(w, params)), routing)


@register_backend(SPEC, Backend.NATIVE, flops=gathered_flops)
def moba_native(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
                block_size: int = 512, topk: int = 3) -> torch.Tensor:
    """Two-branch MoBA (self block causal + selected history blocks) in torch ops, merged by LSE."""
    return _moba_two_branch(q, k, v, causal=causal, block_size=block_size, topk=topk, attend=attend_math)


@register_backend(SPEC, Backend.SDPA, can_run=sdpa_lse_can_run, flops=gathered_flops)
def moba_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
              block_size: int = 512, topk: int = 3) -> torch.Tensor:
    """Two-branch MoBA with each branch in the fused CPU SDPA kernel (forward only), merged by LSE."""
    return _moba_two_branch(q, k, v, causal=causal, block_size=block_size, topk=topk, attend=attend_sdpa_cpu)


def _moba_plan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
               block_size: int = 512, topk: int = 3) -> FlexPlan:
    if not causal:
        raise ValueError("moba is causal only")
    return FlexPlan(moba_mask(moba_select(q, k, block_size=block_size, topk=topk), block_size))


register_flex(SPEC, _moba_plan, dynamic=True,
              flops={Backend.FLEX: eager_flex_flops, Backend.FLEX_COMPILED: compiled_flex_flops})
