"""Linear-time Taylor attention (`native`): `1 + s + s²/2 = φ(q)·φ(k)` with the feature map
`φ(x) = [1, x', x'_i x'_j (i<j), x'_i²/√2]`, `x' = x·D^(−1/4)`: the upper triangle of `x'⊗x'` (off-diagonal
terms appear twice in `(q·k)²`), feature width `1 + D + D(D+1)/2` (Based uses the full `D²`).
Non-causal: one `φ(K)ᵀV` state. Causal: chunks of `chunk` tokens; inside a chunk the quadratic
form, across chunks the prefix sums of per-chunk states. Cost `O(N·D³)` instead of `O(N²·D)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnbench.impls.decon_approx import SPEC
from attnbench.registry import register_backend
from attnbench.spec import Backend

CHUNK = 64


def taylor_features(x: torch.Tensor) -> torch.Tensor:
    """`[..., D]` → `[..., 1 + D + D(D+1)/2]` with `φ(q)·φ(k) = 1 + s + s²/2`, `s = q·k/√D`."""
    d = x.shape[-1]
    x = x * d**-0.25
    i, j = torch.triu_indices(d, d, device=x.device)
    weight = torch.where(i == j, 0.5**0.5, 1.0).to(x.dtype)
    return torch.cat([torch.ones_like(x[..., :1]), x, x[..., i] * x[..., j] * weight], dim=-1)


@register_backend(SPEC, Backend.NATIVE)
def decon_approx_native(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False
                        ) -> torch.Tensor:
    """Linear-time normalised Taylor attention on `[B, H, N, D]` (GQA by repeating kv heads)."""
    dtype, acc = q.dtype, torch.float64 if q.dtype == torch.float64 else torch.float32
    g = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(g, dim=1) if g > 1 else k
    v = v.repeat_interleave(g, dim=1) if g > 1 else v
    q, k, v = q.to(acc), k.to(acc), v.to(acc)
    if not causal:
        fk = taylor_features(k)
        state, norm = fk.transpose(-1, -2) @ v, fk.sum(-2)  # [B, H, F, D], [B, H, F]
        fq = taylor_features(q)
        return ((fq @ state) / (fq @ norm[..., None])).to(dtype)
    b, h, n, d = q.shape
    pad = (-n) % CHUNK  # padded keys sit after every real query: causally invisible to them
    q, k, v = (F.pad(t, (0, 0, 0, pad)).view(b, h, -1, CHUNK, d) for t in (q, k, v))
    s = (q @ k.transpose(-1, -2)) * d**-0.5
    a = (1.0 + s + 0.5 * s * s).tril()  # intra-chunk, causal
    num, den = a @ v, a.sum(-1)
    fk = taylor_features(k)
    states = fk.transpose(-1, -2) @ v  # [B, H, C, F, D] per chunk
    norms = fk.sum(-2)  # [B, H, C, F]
    prev_states = states.cumsum(2) - states  # exclusive prefix over chunks
    prev_norms = norms.cumsum(2) - norms
    fq = taylor_features(q)
    num = num + fq @ prev_states
    den = den + (fq @ prev_norms[..., None]).squeeze(-1)
    out = (num / den[..., None]).view(b, h, -1, d)[:, :, :n]
    return out.to(dtype)
