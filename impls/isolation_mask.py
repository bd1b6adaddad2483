"""Subject-isolation attention masks — IR-Diffusion's Isolation Attention and the hard form of
MultiCrafter's identity-disentangled attention regularisation (IDAR), with a leakage metric.

Joint sequence `[target image tokens | reference tokens of subject 1 | … | subject S | text]`;
target tokens carry labels 0 (background) or s (inside subject s's box on the target grid).
- `ir_diffusion`: a target query of subject s sees target tokens labelled 0 or s and the
  references of s; a background target query sees the target only; a reference query sees
  its own reference.
- `multicrafter` (hard IDAR): a target query sees the whole target plus the references of its
  own subject; a reference query of s sees its own reference and the target region of s.
Text tokens (if any) see everything and are seen by everyone (our choice; the card leaves text
open). `leakage` measures attention mass from subject-s target queries to other subjects' references.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch

from attnbench.flops import mask_flops
from attnbench.ops import dense_attention
from attnbench.registry import register_method
from attnbench.spec import AttentionSpec, Capabilities, FlopCount, Paper, Params, Workload

TARGET, REFERENCE, TEXT = 0, 1, 2
VARIANTS = ("ir_diffusion", "multicrafter")


def _grid(n: int) -> tuple[int, int]:
    """The most square (rows ≤ cols) factorisation of n."""
    rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
    return rows, n // rows


def layout(n: int, subjects: int, ref_frac: float, text_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token kinds `[N]` (TARGET/REFERENCE/TEXT) and labels `[N]` (0 = background, 1..S).

    References take `ref_frac` of the tokens, split equally among subjects; subject s owns a box
    in the s-th of S vertical bands of the target grid (middle half of the rows).
    """
    ref = int(n * ref_frac) // subjects if subjects else 0
    n_tgt = n - subjects * ref - text_tokens
    if n_tgt < 1 or (subjects and ref < 1):
        raise ValueError(f"seq_len={n} leaves no room for {subjects} subjects with ref_frac={ref_frac} "
                         f"and {text_tokens} text tokens")
    rows, cols = _grid(n_tgt)
    r = torch.arange(rows)[:, None].expand(rows, cols)
    c = torch.arange(cols)[None, :].expand(rows, cols)
    band = cols / max(subjects, 1)
    lab = (c.float() / band).floor().long() + 1  # band index 1..S
    inside = (r >= rows // 4) & (r < rows - rows // 4) & (c.float() - (lab - 1) * band >= band / 8) \
        & (c.float() - (lab - 1) * band < band * 7 / 8)
    tgt_lab = torch.where(inside & (subjects > 0), lab, 0).flatten()
    kinds = torch.cat([torch.full((n_tgt,), TARGET), torch.full((subjects * ref,), REFERENCE),
                       torch.full((text_tokens,), TEXT)])
    labels = torch.cat([tgt_lab, torch.arange(1, subjects + 1).repeat_interleave(ref),
                        torch.zeros(text_tokens, dtype=torch.long)])
    return kinds, labels


def allowed(kind_q: torch.Tensor, lab_q: torch.Tensor, kind_k: torch.Tensor, lab_k: torch.Tensor,
            variant: str) -> torch.Tensor:
    """The isolation predicate on broadcastable kinds/labels of queries and keys."""
    subj_q = lab_q != 0
    tgt_q, ref_q, txt_q = kind_q == TARGET, kind_q == REFERENCE, kind_q == TEXT
    tgt_k, ref_k, txt_k = kind_k == TARGET, kind_k == REFERENCE, kind_k == TEXT
    same = lab_k == lab_q
    own_ref = ref_k & same & subj_q
    if variant == "ir_diffusion":
        from_tgt = tgt_q & ((tgt_k & ((lab_k == 0) | same)) | own_ref)
        from_ref = ref_q & ref_k & same
    elif variant == "multicrafter":
        from_tgt = tgt_q & (tgt_k | own_ref)
        from_ref = ref_q & ((ref_k & same) | (tgt_k & same))
    else:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    return from_tgt | from_ref | txt_q | txt_k


@functools.lru_cache(maxsize=32)
def _layout_cached(n: int, subjects: int, ref_frac: float,
                   text_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    return layout(n, subjects, ref_frac, text_tokens)


def isolation_mask(n: int, *, subjects: int = 2, ref_frac: float = 0.25, text_tokens: int = 0,
                   variant: str = "ir_diffusion", device: torch.device | str = "cpu") -> torch.Tensor:
    """Dense `[N, N]` boolean mask (True = allowed)."""
    kinds, labels = (t.to(device) for t in _layout_cached(n, subjects, ref_frac, text_tokens))
    return allowed(kinds[:, None], labels[:, None], kinds[None, :], labels[None, :], variant)


def leakage(q: torch.Tensor, k: torch.Tensor, *, mask: torch.Tensor | None = None, subjects: int = 2,
            ref_frac: float = 0.25, text_tokens: int = 0) -> torch.Tensor:
    """Mean attention mass that subject-s target queries put on references of subjects ≠ s.

    Args:
        q: `[B, Hq, N, D]`; k: `[B, Hkv, N, D]`; mask: `[N, N]` (None = full attention).
    Returns:
        Scalar in [0, 1], averaged over batch, heads and subject target queries.
    """
    kinds, labels = (t.to(q.device) for t in _layout_cached(q.shape[-2], subjects, ref_frac, text_tokens))
    g = q.shape[1] // k.shape[1]
    s = (q.double() @ k.double().repeat_interleave(g, 1).transpose(-1, -2)) * q.shape[-1] ** -0.5
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1)
    rows = (kinds == TARGET) & (labels != 0)
    other_ref = (kinds[None, :] == REFERENCE) & (labels[None, :] != labels[rows][:, None])
    return (p[:, :, rows] * other_ref).sum(-1).mean().to(q.dtype)


def _params(p: Params) -> dict[str, Any]:
    return {k: p[k] for k in ("subjects", "ref_frac", "text_tokens", "variant")}


def flops(w: Workload, params: Params) -> FlopCount:
    return mask_flops(w, isolation_mask(w.seq_q, **_params(params)))


def check(w: Workload, params: Params) -> str | None:
    if w.seq_q != w.seq_kv:
        return "isolation masks are self-attention over one joint sequence: needs seq_q == seq_kv"
    if params["variant"] not in VARIANTS:
        return f"unknown variant {params['variant']!r}; valid: {', '.join(VARIANTS)}"
    try:
        _layout_cached(w.seq_q, params["subjects"], params["ref_frac"], params["text_tokens"])
    except ValueError as exc:
        return str(exc)
    return None


def mask_mod(w: Workload, params: Params) -> Callable[..., torch.Tensor]:
    """Flex `mask_mod` closing over the token kinds and labels of the layout."""
    kinds, labels = (t.to(w.device) for t in _layout_cached(w.seq_q, params["subjects"],
                                                             params["ref_frac"], params["text_tokens"]))
    variant = params["variant"]

    def mod(b: Any, h: Any, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return allowed(kinds[q_idx], labels[q_idx], kinds[kv_idx], labels[kv_idx], variant)

    return mod


SPEC = AttentionSpec(
    name="isolation_mask",
    title="Subject-isolation attention masks (IR-Diffusion / MultiCrafter hard IDAR)",
    paper=Paper("MultiCrafter: spatially disentangled attention for multi-subject generation "
                "(README; code not released)", 2025, "https://github.com/WuTao-CS/MultiCrafter"),
    family="mask-pattern",
    defaults={"subjects": 2, "ref_frac": 0.25, "text_tokens": 0, "variant": "ir_diffusion"},
    capabilities=Capabilities(causal=False, noncausal=True, gqa=True, backward=True, dims=(1,)),
    flops=flops,
    check=check,
    mask_mod=mask_mod,
    claims=("Isolating subjects in attention reduces subject blending in multi-subject generation "
            "(qualitative / consistency metrics; numbers not retrieved).",),
)


@register_method(SPEC)
def isolation_mask_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                             subjects: int = 2, ref_frac: float = 0.25, text_tokens: int = 0,
                             variant: str = "ir_diffusion") -> torch.Tensor:
    """Reference: dense isolation mask + masked softmax, `[B, H, N, D]` in and out."""
    if causal:
        raise ValueError("isolation masks have no causal form")
    mask = isolation_mask(q.shape[-2], subjects=subjects, ref_frac=ref_frac, text_tokens=text_tokens,
                          variant=variant, device=q.device)
    return dense_attention(q, k, v, mask)
