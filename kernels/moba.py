"""MoBA fused backends, and the block-sparse helpers DMA, VMoBA and PARO reuse.

- `native`: the official two-branch scheme in torch ops: a causal self-block branch plus, per KV
  block, attention of exactly the queries that selected it; partial results merged by LSE. Work
  is ~ N·k·block·D instead of N²·D/2. Routing runs inside the call.
- `sdpa`: the same scheme with every branch in PyTorch's fused CPU SDPA kernel, which returns the
  LSE (forward only: that LSE carries no gradient).
- `flex` / `flex_compiled` (staged): FlexAttention with the selection captured in `mask_mod` and
  a BlockMask built from the block-OR of the token mask; the router and mask build are setup.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from attnbench.impls.moba import SPEC, moba_mask, moba_select
from attnbench.ops import flex_can_run, flex_runner
from attnbench.registry import register_backend
from attnbench.spec import AttentionSpec, Backend, Params, Workload

_NEG = -1e30  # finite "minus infinity" for LSE merging (keeps gradients NaN-free)



def block_mask_from_dense(mask: torch.Tensor, mask_mod: Callable[..., Any], block: int = 128) -> Any:
    """FlexAttention `BlockMask` of a dense boolean mask `[B|1, H|1, Nq, Nk]`.

    Tiles with every entry allowed are "full" (no mask_mod call); tiles with some are "partial".
    `mask_mod` must express the same mask: eager flex on CPU evaluates it everywhere and ignores
    the tile lists when it is missing.
    """
    from torch.nn.attention.flex_attention import BlockMask

    nq, nk = mask.shape[-2:]
    padded = torch.nn.functional.pad(mask.to(torch.uint8), (0, (-nk) % block, 0, (-nq) % block))
    tiles = padded.unflatten(-1, (-1, block)).unflatten(-3, (-1, block))  # [B, H, tq, bq, tk, bk]
    any_, all_ = tiles.amax(dim=(-3, -1)).bool(), tiles.amin(dim=(-3, -1)).bool()
    partial = any_ & ~all_

    def lists(flag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        order = torch.argsort(flag.to(torch.int8), dim=-1, descending=True, stable=True)
        return flag.sum(-1).to(torch.int32), order.to(torch.int32)

    kv_num, kv_idx = lists(partial)
    full_num, full_idx = lists(all_)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block,
                                    mask_mod=mask_mod, seq_lengths=(nq, nk))


@dataclass(frozen=True)
class FlexPlan:
    """What a staged flex backend computed in setup.

    `perm` `[H|1, N]`: token order to attend in; `pre`: applied to (q, k, v) after permuting.
    """

    block_mask: Any
    score_mod: Callable[..., Any] | None = None
    perm: torch.Tensor | None = None
    pre: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None


def permute_tokens(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """`x[b, h, perm[h, i]]` for `x [B, H, N, D]`, `perm [H|1, N]`."""
    idx = perm[None, :, :, None].expand(x.shape[0], x.shape[1], -1, x.shape[3])
    return x.gather(2, idx)


def register_flex(spec: AttentionSpec, plan: Callable[..., FlexPlan],
                  can_run: Callable[[Workload, Params], str | None] = flex_can_run) -> None:
    """Register staged `flex` and `flex_compiled` backends of `spec` from a setup function.

    `plan(q, k, v, causal=..., **params) -> FlexPlan` does routing and mask build (setup time);
    the steady-state call permutes (if asked), runs flex_attention and permutes back.
    """
    for backend, compiled in ((Backend.FLEX, False), (Backend.FLEX_COMPILED, True)):
        def prepare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                    _compiled: bool = compiled, **params: Any) -> Callable[..., torch.Tensor]:
            with torch.no_grad():
                p = plan(q, k, v, causal=causal, **params)
            attend = flex_runner(_compiled)
            gqa = q.shape[1] != k.shape[1]
            inv = torch.argsort(p.perm, dim=-1) if p.perm is not None else None

            def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
                if p.perm is not None:
                    q, k, v = (permute_tokens(t, p.perm) for t in (q, k, v))
                if p.pre is not None:
                    q, k, v = p.pre(q, k, v)
                o = attend(q, k, v, score_mod=p.score_mod, block_mask=p.block_mask, enable_gqa=gqa)
                return permute_tokens(o, inv) if inv is not None else o

            if _compiled:
                with torch.no_grad():
                    run(q.detach(), k.detach(), v.detach())  # compile now: setup, not steady state
            return run

        register_backend(spec, backend, can_run=can_run, staged=True)(prepare)


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


def _moba_two_branch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, block_size: int,
                     topk: int, attend: Attend) -> torch.Tensor:
    if not causal:
        raise ValueError("moba is causal only")
    sel = moba_select(q, k, block_size=block_size, topk=topk)
    own = torch.arange(q.shape[2], device=q.device) // block_size
    history = sel & (torch.arange(sel.shape[-1], device=q.device)[None, :] != own[:, None])
    return gathered_block_attention(q, k, v, history, block_size, causal_self=True, attend=attend)


@register_backend(SPEC, Backend.NATIVE)
def moba_native(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
                block_size: int = 512, topk: int = 3) -> torch.Tensor:
    """Two-branch MoBA (self block causal + selected history blocks) in torch ops, merged by LSE."""
    return _moba_two_branch(q, k, v, causal=causal, block_size=block_size, topk=topk, attend=attend_math)


@register_backend(SPEC, Backend.SDPA, can_run=sdpa_lse_can_run)
def moba_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
              block_size: int = 512, topk: int = 3) -> torch.Tensor:
    """Two-branch MoBA with each branch in the fused CPU SDPA kernel (forward only), merged by LSE."""
    return _moba_two_branch(q, k, v, causal=causal, block_size=block_size, topk=topk, attend=attend_sdpa_cpu)


def _moba_plan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
               block_size: int = 512, topk: int = 3) -> FlexPlan:
    if not causal:
        raise ValueError("moba is causal only")
    mask = moba_mask(moba_select(q, k, block_size=block_size, topk=topk), block_size)
    return FlexPlan(block_mask_from_dense(mask, mask_mod=lambda b, h, qi, ki: mask[b, h, qi, ki]))


register_flex(SPEC, _moba_plan)
