"""MoBA — "Mixture of Block Attention for Long-Context LLMs" (Lu et al., 2025), arXiv 2502.13189.

Causal attention over blocks of `block_size` keys: a parameter-free router scores past blocks by
⟨q, mean K_block⟩ and each query attends to its top-k blocks, its own block always among them.
Defaults are the paper's scaling-law setting (512 / top-3); Kimi's 1M setup uses 4096 / 12.
"""

from __future__ import annotations

import torch

from attnbench import density
from attnbench.flops import mask_flops
from attnbench.inputs import make_qkv
from attnbench.ops import causal_mask, dense_attention
from attnbench.registry import register_method
from attnbench.spec import AttentionSpec, Capabilities, FlopCount, Paper, Params, Workload


def block_means(k: torch.Tensor, block: int) -> torch.Tensor:
    """Mean of each key block in fp32: `[B, H, N, D]` → `[B, H, ⌈N/block⌉, D]` (last block may be short)."""
    n = k.shape[2]
    nblk = -(-n // block)
    padded = torch.nn.functional.pad(k.float(), (0, 0, 0, nblk * block - n))
    counts = torch.full((nblk,), float(block), device=k.device)
    counts[-1] = n - (nblk - 1) * block
    return padded.unflatten(2, (nblk, block)).sum(3) / counts[:, None]


def moba_select(q: torch.Tensor, k: torch.Tensor, *, block_size: int, topk: int) -> torch.Tensor:
    """Router: `[B, H, N, n_blocks]` bool, the blocks each query attends to (its own included).

    Scores ⟨q, k̄_i⟩ in fp32; blocks not fully in the past are excluded, the current block is
    forced, and the top-k (k counts the current block) are kept.
    """
    n = q.shape[2]
    nblk = -(-n // block_size)
    gate = q.float() @ block_means(k, block_size).transpose(-1, -2)  # [B, H, N, nblk]
    cur = torch.arange(n, device=q.device) // block_size  # block of each query
    blk = torch.arange(nblk, device=q.device)
    past = blk[None, :] < cur[:, None]  # fully in the past: (i+1)·B ≤ pos(q) ⇔ i < cur
    gate = gate.masked_fill(~past, float("-inf")).masked_fill(blk[None, :] == cur[:, None], float("inf"))
    top = gate.topk(min(topk, nblk), dim=-1).indices
    sel = torch.zeros_like(gate, dtype=torch.bool).scatter_(-1, top, True)
    return sel & (gate > float("-inf"))  # never a future block, even when fewer than k exist


def moba_mask(sel: torch.Tensor, block_size: int) -> torch.Tensor:
    """Token mask `[B, H, N, N]`: selected blocks AND causal."""
    n = sel.shape[2]
    cols = torch.arange(n, device=sel.device) // block_size
    return sel[..., cols] & causal_mask(n, n, sel.device)


def _flops(w: Workload, params: Params) -> FlopCount:
    """From the routing of a seeded random input of `w` (make_qkv seed 0); tiles of 128×128.

    The router (block means, gate scores, top-k) is input-dependent work: in useful and executed."""
    from attnbench.flops import block_routing_flops, with_routing

    q, k, _ = make_qkv(w.replace(dtype="float32"), seed=0, device="cpu")
    sel = moba_select(q, k, block_size=params["block_size"], topk=params["topk"])
    return with_routing(mask_flops(w, moba_mask(sel, params["block_size"])),
                        block_routing_flops(w, params["block_size"]))


def moba_pairs(n: int, block_size: int, topk: int) -> float:
    """Causal pairs MoBA attends on `n` tokens, whatever the input: the own block up to the query,
    plus `topk − 1` past blocks (always full) while that many exist."""
    i = torch.arange(n, dtype=torch.float64)
    return float((i % block_size + 1 + block_size * (i // block_size).clamp(max=topk - 1)).sum())


def at_density(w: Workload, target: float, params: Params) -> dict:
    """(block_size, topk) attending `target` of the causal pairs of `w`, within one block.

    Blocks are powers of two; among settings within half a block of the target the one with about
    16 blocks and top-k ≥ 2 (the router still chooses) wins (`attnbench.density.pick`)."""
    n = w.seq_q
    return density.pick(density.block_topk_choices(n, True, lambda b, k: moba_pairs(n, b, k)), target)


SPEC = AttentionSpec(
    name="moba",
    title="Mixture of block attention (MoBA)",
    paper=Paper("MoBA: Mixture of Block Attention for Long-Context LLMs", 2025, "2502.13189"),
    family="sparse-dynamic",
    defaults={"block_size": 512, "topk": 3},
    capabilities=Capabilities(causal=True, noncausal=False),
    flops=_flops,
    at_density=at_density,
    check=lambda w, p: None if w.seq_q == w.seq_kv else "moba needs seq_q == seq_kv (self-attention prefill)",
    claims=("Up to 6.5× prefill speedup at 1M tokens over full FlashAttention.",
            "16× lower attention time at 10M tokens (95.31% sparse); LM loss close to full attention."),
)


@register_method(SPEC)
def moba(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True, block_size: int = 512,
         topk: int = 3) -> torch.Tensor:
    """Naive MoBA: gate → top-k → token mask `[B, H, N, N]` AND causal → masked softmax."""
    if not causal:
        raise ValueError("moba is causal only")
    sel = moba_select(q, k, block_size=block_size, topk=topk)
    mask = moba_mask(sel, block_size)
    density.record_mask(mask, causal=True)
    return dense_attention(q, k, v, mask)
