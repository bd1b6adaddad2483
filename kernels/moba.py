"""MoBA fused backends, and the block-sparse helpers DMA, VMoBA and PARO reuse.

- `native`: the official two-branch scheme in torch ops: a causal self-block branch plus, per KV
  block, attention of exactly the queries that selected it; partial results merged by LSE. Work
  is ~ N·k·block·D instead of N²·D/2.
- `flex` / `flex_compiled` (staged): FlexAttention with the selection captured in `mask_mod` and
  a BlockMask built from the block-OR of the token mask; the router and mask build are setup.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from attnbench.impls.moba import SPEC, moba_mask, moba_select

from attnbench.registry import register_backend
from attnbench.spec import AttentionSpec, Backend, Params, Workload

_NEG = -1e30  # finite "minus infinity" for LSE merging (keeps gradients NaN-free)
_RECOMPILE_LIMIT = 256


def flex_can_run(w: Workload, params: Params) -> str | None:
    if w.mode != "fwd" and w.device == "cpu":
        return "FlexAttention has no backward on CPU"
    if w.dtype == "float64" and w.device != "cpu":
        return "FlexAttention on GPU does not take float64"
    return None


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
            from torch.nn.attention.flex_attention import flex_attention

            with torch.no_grad():
                p = plan(q, k, v, causal=causal, **params)
            attend = torch.compile(flex_attention, dynamic=False) if _compiled else flex_attention
            gqa = q.shape[1] != k.shape[1]
            inv = torch.argsort(p.perm, dim=-1) if p.perm is not None else None

            def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
                if p.perm is not None:
                    q, k, v = (permute_tokens(t, p.perm) for t in (q, k, v))
                if p.pre is not None:
                    q, k, v = p.pre(q, k, v)
                with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
                    o = attend(q, k, v, score_mod=p.score_mod, block_mask=p.block_mask, enable_gqa=gqa)
                return permute_tokens(o, inv) if inv is not None else o

            if _compiled:
                with torch.no_grad():
                    run(q.detach(), k.detach(), v.detach())  # compile now: setup, not steady state
            return run

        register_backend(spec, backend, can_run=can_run, staged=True)(prepare)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
            mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 softmax attention returning (out, lse); `mask` True = allowed."""
    s = (q @ k.transpose(-1, -2)) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    return torch.softmax(s, dim=-1) @ v, lse


def gathered_block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sel: torch.Tensor,
                             block: int, *, causal_self: bool) -> torch.Tensor:
    """Softmax over the union of selected key blocks, computed per KV block on its queries only.

    Args:
        q, k, v: `[B, H, N, D]` (same N for q and k).
        sel: `[B, H, N, n_blocks]` bool, blocks a query attends to in full (non-causally).
        causal_self: also attend to the own block under a causal mask (MoBA's self branch);
            `sel` must then exclude the own block.
    Returns:
        `[B, H, N, D]` in q's dtype. Partial results are merged by log-sum-exp.
    """
    b, h, n, d = q.shape
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = d ** -0.5
    qf, kf, vf = (t.to(acc).reshape(b * h, n, d) for t in (q, k, v))
    sel = sel.reshape(b * h, n, -1)
    nblk = sel.shape[-1]
    if causal_self:  # own block, causal: [BH, nblk, block, block] tiles
        pad = nblk * block - n
        qb, kb, vb = (torch.nn.functional.pad(t, (0, 0, 0, pad)).unflatten(1, (nblk, block))
                      for t in (qf, kf, vf))
        tril = torch.ones(block, block, dtype=torch.bool, device=q.device).tril()
        o_self, lse_self = _attend(qb, kb, vb, scale, tril)
        o_acc = torch.cat([o_self.flatten(1, 2)[:, :n], qf.new_zeros(b * h, 1, d)], dim=1)
        lse_acc = torch.cat([lse_self.flatten(1, 2)[:, :n], qf.new_full((b * h, 1), _NEG)], dim=1)
    else:
        o_acc = qf.new_zeros(b * h, n + 1, d)  # row n is a sink for padded rows
        lse_acc = qf.new_full((b * h, n + 1), _NEG)
    for i in range(nblk):
        sel_i = sel[..., i]
        counts = sel_i.sum(-1)
        m = int(counts.max())
        if m == 0:
            continue
        order = torch.argsort(sel_i.to(torch.int8), dim=-1, descending=True, stable=True)[:, :m]
        valid = torch.arange(m, device=q.device)[None, :] < counts[:, None]
        rows = torch.where(valid, order, n)  # padded rows write into the sink row
        q_g = qf.gather(1, order[..., None].expand(-1, -1, d))
        o_i, lse_i = _attend(q_g, kf[:, i * block:(i + 1) * block], vf[:, i * block:(i + 1) * block], scale)
        lse_i = torch.where(valid, lse_i, _NEG)
        lse_old = lse_acc.gather(1, rows)
        o_old = o_acc.gather(1, rows[..., None].expand(-1, -1, d))
        lse_new = torch.logaddexp(lse_old, lse_i)
        o_new = o_old * torch.exp(lse_old - lse_new)[..., None] + o_i * torch.exp(lse_i - lse_new)[..., None]
        lse_acc = lse_acc.scatter(1, rows, lse_new)
        o_acc = o_acc.scatter(1, rows[..., None].expand(-1, -1, d), o_new)
    return o_acc[:, :n].reshape(b, h, n, d).to(q.dtype)


@register_backend(SPEC, Backend.NATIVE)
def moba_native(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
                block_size: int = 512, topk: int = 3) -> torch.Tensor:
    """Two-branch MoBA (self block causal + selected history blocks), merged by LSE."""
    if not causal:
        raise ValueError("moba is causal only")
    sel = moba_select(q, k, block_size=block_size, topk=topk)
    own = torch.arange(q.shape[2], device=q.device) // block_size
    history = sel & (torch.arange(sel.shape[-1], device=q.device)[None, :] != own[:, None])
    return gathered_block_attention(q, k, v, history, block_size, causal_self=True)


def _moba_plan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
               block_size: int = 512, topk: int = 3) -> FlexPlan:
    if not causal:
        raise ValueError("moba is causal only")
    mask = moba_mask(moba_select(q, k, block_size=block_size, topk=topk), block_size)
    return FlexPlan(block_mask_from_dense(mask, mask_mod=lambda b, h, qi, ki: mask[b, h, qi, ki]))


register_flex(SPEC, _moba_plan)
