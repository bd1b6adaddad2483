"""Every method that declares a flex `mask_mod`/`score_mod` has a reference equal to a naive dense
softmax with that mask and score edit, evaluated elementwise (the oracle the flex kernels also use)."""

from __future__ import annotations

import pytest
import torch

from attnbench.inputs import make_qkv
from attnbench.ops import dense_attention
from attnbench.registry import METHODS
from attnbench.spec import Workload, run_params

WORKLOADS = [Workload(batch=1, heads_q=2, heads_kv=2, seq_q=64, seq_kv=64, head_dim=16, causal=c,
                      dtype="float64") for c in (False, True)]


def _mods() -> list[pytest.param]:
    return [pytest.param(e.name, w, id=f"{e.name}-{w.id}") for e in METHODS
            if e.spec.kind == "functional" and (e.spec.mask_mod or e.spec.score_mod) for w in WORKLOADS]


@pytest.mark.parametrize(("method", "workload"), _mods())
def test_reference_equals_masked_softmax(method: str, workload: Workload) -> None:
    entry = METHODS.get(method)
    params = entry.spec.params()
    w = entry.spec.shape(workload, params)
    why = entry.spec.why_not(w, params)
    if why:
        pytest.skip(why)
    q, k, v = make_qkv(w, seed=3)
    b, h, i, j = (torch.arange(n)[idx] for n, idx in
                  zip((w.batch, w.heads_q, w.seq_q, w.seq_kv),
                      ((slice(None), None, None, None), (None, slice(None), None, None),
                       (None, None, slice(None), None), (None, None, None, slice(None))), strict=True))
    mask_mod = entry.spec.mask_mod(w, params) if entry.spec.mask_mod else None
    score_mod = entry.spec.score_mod(w, params) if entry.spec.score_mod else None
    mask = mask_mod(b, h, i, j).expand(w.batch, w.heads_q, w.seq_q, w.seq_kv) if mask_mod else None
    bias = None
    if score_mod is not None:  # any elementwise edit of the logits, expressed as a bias
        kk = k.repeat_interleave(w.groups, dim=1)
        scores = (q @ kk.transpose(-1, -2)) * w.head_dim ** -0.5
        bias = score_mod(scores, b, h, i, j) - scores
    want = dense_attention(q, k, v, mask, bias)
    got = entry.reference.prepare(q, k, v, causal=w.causal, params=run_params(w, params))(q, k, v)
    torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-7)
