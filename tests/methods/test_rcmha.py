"""RCMHA invariants (spec card methods-modeling A1): identity convs ⇒ RMHA; shared kernel; FLOPs;
Transformer-XL memory: mem_len 0 is the memoryless layer per segment, memory changes later
segments, a memory covering the whole past equals full causal attention, stop-gradient."""

from __future__ import annotations

import pytest
import torch

from attnbench.impls.rcmha import SPEC, rcmha_flops, segments
from attnbench.impls.rmha import rel_flops
from attnbench.layers import build_layer
from attnbench.spec import Workload

C, H, N = 32, 4, 24


def _layer(method: str = "rcmha", backend: str = "reference", *, causal: bool = True, **params):
    torch.manual_seed(0)
    return build_layer(method, backend, C, H, causal=causal, params={"max_len": 64, **params}).double()


def _x() -> torch.Tensor:
    return torch.randn(2, N, C, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.mark.parametrize("causal", [True, False])
def test_identity_convs_are_rmha(causal: bool) -> None:
    rc, x = _layer(causal=causal, seg_len=0), _x()
    for conv in rc.convs:
        conv.set_identity()
    torch.testing.assert_close(rc(x), _layer("rmha", causal=causal)(x))  # same seed ⇒ same shared weights


def test_kernel_shared_across_heads_by_default() -> None:
    assert _layer().convs[0].weight.shape == (C // H, 3)


@pytest.mark.parametrize("rel_kind", ["learned", "sinusoidal"])
def test_sdpa_matches_reference(rel_kind: str) -> None:
    x = _x()
    torch.testing.assert_close(_layer(backend="sdpa", rel_kind=rel_kind)(x), _layer(rel_kind=rel_kind)(x))


def test_flops_add_the_convs() -> None:
    w = Workload(batch=1, heads_q=4, heads_kv=4, seq_q=64, seq_kv=64, head_dim=16)
    conv = 2 * 3 * 3 * 64 * 64
    assert rel_flops(w, SPEC.params()).useful == rel_flops(w, {**SPEC.params(), "conv": False}).useful + conv


@pytest.mark.parametrize("causal", [True, False])
def test_mem_len_zero_is_the_memoryless_layer_per_segment(causal: bool) -> None:
    x = _x()
    seg = _layer(causal=causal, mem_len=0, seg_len=8)
    plain = _layer(causal=causal, seg_len=0)
    want = torch.cat([plain(x[:, s:s + 8]) for s in range(0, N, 8)], 1)
    torch.testing.assert_close(seg(x), want)
    torch.testing.assert_close(_layer(causal=causal, mem_len=0, seg_len=0)(x), plain(x))


@pytest.mark.parametrize("causal", [True, False])
def test_memory_changes_the_second_segment_only(causal: bool) -> None:
    x = _x()
    with_mem, without = _layer(causal=causal, mem_len=8, seg_len=8)(x), _layer(causal=causal, mem_len=0, seg_len=8)(x)
    torch.testing.assert_close(with_mem[:, :8], without[:, :8])
    assert not torch.allclose(with_mem[:, 8:16], without[:, 8:16])


def test_memory_over_the_whole_past_is_full_causal_attention() -> None:
    x = _x()
    torch.testing.assert_close(_layer(mem_len=N, seg_len=6)(x), _layer(seg_len=0)(x))


def test_memory_is_stop_gradient() -> None:
    layer, x = _layer(mem_len=8, seg_len=8), _x().requires_grad_(True)
    layer(x)[:, 8:].sum().backward()
    assert x.grad[:, :8].abs().max() == 0 and x.grad[:, 8:].abs().max() > 0
    ref, x2 = _layer(seg_len=0), _x().requires_grad_(True)
    ref(x2)[:, 8:].sum().backward()
    assert x2.grad[:, :8].abs().max() > 0  # without segments the past gets gradient


def test_segments_and_flops() -> None:
    assert segments(24, 8, 12) == [(0, 8), (8, 8), (12, 8)]
    assert segments(24, 0, 12) == [(0, 24)]
    w = Workload(batch=1, heads_q=4, heads_kv=4, seq_q=64, seq_kv=64, head_dim=16, causal=True)
    one = {**SPEC.params(), "seg_len": 0}
    assert rcmha_flops(w, one).useful == pytest.approx(rel_flops(w, one).useful)
    seg = rcmha_flops(w, SPEC.params())  # 4 segments of 16 with up to 32 cached: less than full
    assert seg.useful < rel_flops(w, one).useful <= seg.executed * 4
