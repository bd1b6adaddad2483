"""Context-parallel attention (attnbench.distributed): ring, all-gather-KV and Ulysses on 2 gloo ranks equal
single-process attention (causal or not, GQA, N not a multiple of P), forward and gradients; the LSE merge is
associative; measured bytes equal the analytic formula; the `distributed` suite writes every declared metric."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from attnbench import distributed as cp
from attnbench.cli import app
from attnbench.ops import causal_mask, dense_attention
from attnbench.registry import SUITES

SHAPES = [(2, 2, 2, 64), (1, 4, 2, 37)]  # (batch, heads, kv_heads, n): plain, and GQA with N odd


def _inputs(b: int, h: int, hk: int, n: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, x, n, 8, generator=gen, dtype=torch.float64) for x in (h, hk, hk)]


def _dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    return dense_attention(q, k, v, causal_mask(q.shape[-2], k.shape[-2]) if causal else None)


def check_ranks() -> dict[str, Any]:
    """Runs on every rank of a 2-rank group: worst forward / gradient error per variant, and sent bytes."""
    comm = cp.Comm()
    errs: dict[str, float] = {}
    for method, (b, h, hk, n), causal in itertools.product(cp.METHODS, SHAPES, (False, True)):
        full = [t.requires_grad_() for t in _inputs(b, h, hk, n)]
        want = _dense(*full, causal)
        up = torch.randn(want.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        want_grads = torch.autograd.grad(want, full, up)
        n_pad, pieces = cp.layout(n, comm.world, causal)
        local = [cp.shard(t.detach(), pieces[comm.rank], n_pad).requires_grad_() for t in full]
        out = cp.VARIANTS[method](*local, n=n, causal=causal, comm=comm)
        grads = torch.autograd.grad(out, local, cp.shard(up, pieces[comm.rank], n_pad))
        err = float((out - cp.shard(want, pieces[comm.rank], n_pad)[..., :out.shape[-2], :]).abs()
                    .masked_select(_valid(pieces[comm.rank], n, out)).max())
        for g, wg in zip(grads, want_grads, strict=True):
            err = max(err, float((g - cp.shard(wg, pieces[comm.rank], n_pad)).abs().max()))
        errs[method] = max(errs.get(method, 0.0), err)
    sent = {}
    for method in cp.METHODS:  # a divisible case: B2 H4 Hkv2 N64, causal (zig-zag)
        q, k, v = _inputs(2, 4, 2, 64)
        n_pad, pieces = cp.layout(64, comm.world, True)
        comm.sent_bytes = 0
        cp.VARIANTS[method](*(cp.shard(t, pieces[comm.rank], n_pad) for t in (q, k, v)), n=64, causal=True,
                            comm=comm)
        sent[method] = comm.sent_bytes
    return {"errs": errs, "sent": sent}


def _valid(pieces: cp.Pieces, n: int, out: torch.Tensor) -> torch.Tensor:
    """Rows of a local shard that are real tokens (not padding)."""
    pos = torch.cat([torch.arange(a, b) for a, b in pieces])
    return (pos < n)[:, None].expand(out.shape[-2:]).expand_as(out)


def test_variants_on_two_gloo_ranks_match_dense_attention() -> None:
    results = cp.spawn(2, check_ranks, timeout_s=120)
    for res in results:
        assert all(e < 1e-10 for e in res["errs"].values()), res["errs"]
        for method, sent in res["sent"].items():
            ana = cp.analytic_bytes(method, batch=2, heads=4, kv_heads=2, n=64, head_dim=8, elem=8, world=2,
                                    causal=True)
            assert sent == ana, (method, sent, ana)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("method", cp.METHODS)
def test_simulated_ranks_match_dense_attention(method: str, world: int) -> None:
    for (b, h, hk, n), causal in itertools.product([(1, 4, 2, 37), (1, 4, 4, 5), (2, 4, 4, 64)], (False, True)):
        q, k, v = _inputs(b, h, hk, n)
        if method == "ulysses" and cp.ulysses_check(h, hk, world):
            with pytest.raises(ValueError, match="divisible by P"):
                cp.simulate(method, q, k, v, causal=causal, world=world)
            continue
        got = cp.simulate(method, q, k, v, causal=causal, world=world)
        assert torch.allclose(got, _dense(q, k, v, causal), atol=1e-12, rtol=0)


def test_lse_merge_is_associative_and_order_independent() -> None:
    q, k, v = _inputs(1, 2, 2, 48)
    parts = [cp.block_attention(q, k[..., s, :], v[..., s, :], None)
             for s in (slice(0, 10), slice(10, 30), slice(30, 48))]
    (a, la), (b, lb), (c, lc) = parts
    left = cp.lse_merge(*cp.lse_merge(a, la, b, lb), c, lc)
    right = cp.lse_merge(a, la, *cp.lse_merge(b, lb, c, lc))
    shuffled = cp.lse_merge(*cp.lse_merge(c, lc, a, la), b, lb)
    full = cp.block_attention(q, k, v, None)
    for out, lse in (left, right, shuffled):
        assert torch.allclose(out, full[0], atol=1e-12) and torch.allclose(lse, full[1], atol=1e-12)
    empty = torch.full_like(la, float("-inf"))  # a side that saw no key is the identity
    out, lse = cp.lse_merge(a, la, torch.zeros_like(a), empty)
    assert torch.equal(out, a) and torch.allclose(lse, la)


def test_suite_through_the_cli_writes_every_declared_metric(tmp_path: Path) -> None:
    out = tmp_path / "res"
    res = CliRunner().invoke(app, [
        "run", "--suites", "distributed", "--methods", "ring_attention", "--backends", "native",
        "--set", "shapes.seq_lens=[48]", "--set", "shapes.heads=2", "--set", "shapes.head_dim=16",
        "--set", "shapes.causal=[true]", "--set", "timing.max_reps=2", "-o", str(out), "--no-report"])
    assert res.exit_code == 0, res.output
    df = pd.concat(pd.read_parquet(f) for f in out.glob("*.parquet"))
    assert set(df["status"]) == {"ok"}, df[["metric", "status", "error"]]
    assert {m.name for m in SUITES.get("distributed").metrics} == set(df["metric"])
    rows = df.set_index("metric")["value"]
    assert rows["comm_bytes"] == rows["comm_bytes_analytic"] > 0 and rows["max_abs_err"] < 1e-5
