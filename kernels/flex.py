"""FlexAttention plumbing: the generic eager/compiled backends for every method with `mask_mod`/
`score_mod`, and `register_flex` for methods whose mask comes from a plan (routing, calibration).

Generic backends: the block mask is a property of (method, workload, params), built once in
`prepare` (setup: input-independent); compiled flex also compiles there (one warm call).
`register_flex` plans are either static (calibrated once, e.g. PARO: setup) or dynamic
(input-dependent routing, e.g. MoBA/VMoBA/DMA: the plan and its BlockMask are built inside every
call, so routing is timed with the attention; `setup_ms` holds only compilation).

Executed FLOPs (`Impl.flops`): eager flex evaluates every score and masks afterwards (its math
path), so it executes all Nq·Nk pairs; compiled flex visits the BlockMask's tiles in full.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from attnbench.flops import all_pairs_flops, block_mask_flops, dense_flops
from attnbench.ops import flex_can_run, flex_runner, workload_of
from attnbench.registry import Impl, register_backend, register_generic_backend
from attnbench.spec import AttentionSpec, Backend, FlopCount, FlopsFn, Params, Workload

FLEX_BLOCK = 128  # FlexAttention's default BlockMask tile


def block_mask_for(spec: AttentionSpec, w: Workload, params: Params) -> Any:
    """`BlockMask` of the spec's `mask_mod` for `w` (None when the method is unmasked)."""
    from torch.nn.attention.flex_attention import create_block_mask

    mask_mod = spec.mask_mod(w, params) if spec.mask_mod else None
    if mask_mod is None:
        return None
    return create_block_mask(mask_mod, None, None, w.seq_q, w.seq_kv, device=w.device)


def block_mask_from_dense(mask: torch.Tensor, mask_mod: Callable[..., Any], block: int = FLEX_BLOCK) -> Any:
    """FlexAttention `BlockMask` of a dense boolean mask `[B|1, H|1, Nq, Nk]`.

    Tiles with every entry allowed are "full" (no mask_mod call); tiles with some are "partial".
    `mask_mod` must express the same mask: eager flex evaluates it everywhere.
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


def spec_useful(spec: AttentionSpec, w: Workload, params: Params) -> float:
    return spec.flops(w, params).useful if spec.flops else dense_flops(w).useful


def generic_flops(spec: AttentionSpec, compiled: bool) -> FlopsFn:
    """Executed FLOPs of the generic flex backends: all pairs (eager) or BlockMask tiles (compiled)."""

    def flops(w: Workload, params: Params) -> FlopCount:
        useful = spec_useful(spec, w, params)
        if not compiled:
            return all_pairs_flops(w, useful)
        bm = block_mask_for(spec, w.replace(device="cpu"), params)
        if bm is None:  # no mask: every (padded) tile
            tq, tk = -(-w.seq_q // FLEX_BLOCK), -(-w.seq_kv // FLEX_BLOCK)
            pairs = tq * tk * FLEX_BLOCK * FLEX_BLOCK
            return FlopCount(useful=useful, executed=4.0 * w.batch * w.heads_q * pairs * w.head_dim)
        return block_mask_flops(w, bm, useful)

    return flops


def _make(spec: AttentionSpec, compiled: bool) -> Callable[..., Callable[..., torch.Tensor]]:
    def prepare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                **params: Any) -> Callable[..., torch.Tensor]:
        w = workload_of(q, k, causal, params)
        block_mask = block_mask_for(spec, w, params)
        score_mod = spec.score_mod(w, params) if spec.score_mod else None
        gqa = q.shape[1] != k.shape[1]
        attend = flex_runner(compiled)

        def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return attend(q, k, v, score_mod=score_mod, block_mask=block_mask, enable_gqa=gqa)

        if compiled:
            with torch.no_grad():
                run(q.detach(), k.detach(), v.detach())  # compile now: setup, not steady state
        return run

    return prepare


def _applies(spec: AttentionSpec) -> bool:
    return spec.kind == "functional" and (spec.mask_mod is not None or spec.score_mod is not None)


for _backend, _compiled in ((Backend.FLEX, False), (Backend.FLEX_COMPILED, True)):
    register_generic_backend(
        _backend, _applies,
        lambda spec, _b=_backend, _c=_compiled: Impl(spec.name, _b, _make(spec, _c), flex_can_run, True,
                                                     generic_flops(spec, _c)))


# ---- plan-driven flex backends (routing or calibration decides the mask) ----

@dataclass(frozen=True)
class FlexPlan:
    """What a flex backend attends with.

    `mask` `[B|1, Hm, Nq, Nk]` bool (in attend order; query head h reads mask head h // groups)
    and `bias` `[B, Hm, Nk]` (added to every query's score of key j) are captured in the
    mask/score mods; `block` is the BlockMask tile. `perm` `[H|1, N]`: token order to attend in;
    `pre`: applied to (q, k, v) after permuting.
    """

    mask: torch.Tensor
    bias: torch.Tensor | None = None
    groups: int = 1
    block: int = FLEX_BLOCK
    perm: torch.Tensor | None = None
    pre: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None


def permute_tokens(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """`x[b, h, perm[h, i]]` for `x [B, H, N, D]`, `perm [H|1, N]`."""
    idx = perm[None, :, :, None].expand(x.shape[0], x.shape[1], -1, x.shape[3])
    return x.gather(2, idx)


class Captured:
    """The tensors a plan's mask/score mods read, kept in persistent buffers refilled in place, so
    compiled flex sees the same captured tensors every call (no recompile per routing)."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        self.mask_mod: Callable[..., Any] | None = None
        self.score_mod: Callable[..., Any] | None = None

    def load(self, p: FlexPlan) -> Any:
        """Copy the plan in; return its BlockMask (tiles from the block-OR of the mask)."""
        if self.mask is None or self.mask.shape != p.mask.shape:
            self.mask = p.mask.clone()
            m, g = self.mask, p.groups
            sb, sh = int(m.shape[0] > 1), int(m.shape[1] > 1)
            self.mask_mod = lambda b, h, q_idx, kv_idx: m[b * sb, (h // g) * sh, q_idx, kv_idx]
        else:
            self.mask.copy_(p.mask)
        if p.bias is not None:
            if self.bias is None or self.bias.shape != p.bias.shape:
                self.bias = p.bias.clone()
                bias, g = self.bias, p.groups
                self.score_mod = lambda score, b, h, q_idx, kv_idx: score + bias[b, h // g, kv_idx]
            else:
                self.bias.copy_(p.bias)
        tiles = p.mask.repeat_interleave(p.groups, dim=1) if p.groups > 1 else p.mask
        return block_mask_from_dense(tiles, self.mask_mod, block=p.block)


def register_flex(spec: AttentionSpec, plan: Callable[..., FlexPlan], *, dynamic: bool,
                  can_run: Callable[[Workload, Params], str | None] = flex_can_run,
                  flops: dict[Backend, FlopsFn] | None = None) -> None:
    """Register `flex` and `flex_compiled` backends of `spec` from a plan function.

    `plan(q, k, v, causal=..., **params) -> FlexPlan`. `dynamic`: the plan depends on the input
    (routing), so it runs inside every call; otherwise it runs once in setup (calibration).
    `flops[backend]`: that backend's executed-FLOPs model.
    """
    for backend, compiled in ((Backend.FLEX, False), (Backend.FLEX_COMPILED, True)):
        def prepare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                    _compiled: bool = compiled, **params: Any) -> Callable[..., torch.Tensor]:
            attend = flex_runner(_compiled)
            gqa = q.shape[1] != k.shape[1]
            cap = Captured()

            def route(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[FlexPlan, Any]:
                p = plan(q, k, v, causal=causal, **params)
                return p, cap.load(p)

            static = None if dynamic else route(q.detach(), k.detach(), v.detach())
            inv = None if dynamic or static[0].perm is None else torch.argsort(static[0].perm, dim=-1)

            def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
                p, bm = route(q, k, v) if static is None else static
                back = inv if static is not None else (None if p.perm is None else torch.argsort(p.perm, -1))
                if p.perm is not None:
                    q, k, v = (permute_tokens(t, p.perm) for t in (q, k, v))
                if p.pre is not None:
                    q, k, v = p.pre(q, k, v)
                o = attend(q, k, v, score_mod=cap.score_mod, block_mask=bm, enable_gqa=gqa)
                return permute_tokens(o, back) if back is not None else o

            if _compiled:
                with torch.no_grad():
                    run(q.detach(), k.detach(), v.detach())  # compile now: setup, not steady state
            return run

        register_backend(spec, backend, can_run=can_run, staged=True,
                         flops=(flops or {}).get(backend))(prepare)
