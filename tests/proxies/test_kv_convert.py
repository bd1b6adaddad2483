"""KV-head conversion proxy (methods card §12): DHA grouping + fusion vs GQA mean-pooling of a trained MHA."""

from __future__ import annotations

import pytest
import torch

from attnbench.impls.dha import DHAttention
from attnbench.presets import Preset
from attnbench.proxy.train import ModelConfig, ProxyModel
from attnbench.registry import METHODS, SUITES
from attnbench.suite import ResolvedCase
from attnbench.suites.kv_convert import convert_layer, convert_model, kv_bytes

H, C, N = 4, 32, 12


def _src(backend: str = "reference") -> ProxyModel:
    torch.manual_seed(0)
    return ProxyModel(ModelConfig(method="mha", backend=backend, vocab=16, out_dim=16, d_model=C, n_heads=H,
                                  n_layers=2, max_len=N)).double()


def _tokens() -> torch.Tensor:
    return torch.randint(0, 16, (2, N), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("how", ["dha", "gqa"])
@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_one_head_per_group_is_the_source_model(how: str, backend: str) -> None:
    src, x = _src(), _tokens()
    conv = convert_model(src, how, H, H, backend=backend)
    assert all(isinstance(b.attn, DHAttention) for b in conv.blocks)
    torch.testing.assert_close(conv(x), src(x))
    assert kv_bytes(conv, N) == kv_bytes(src, N) == 2 * 2 * H * (C // H) * N * 4  # layers·(K+V)·H·d·N·fp32


def _duplicated_heads() -> ProxyModel:
    """Source whose K heads 0 = 2, 1 = 3 and V heads 0 = 3, 1 = 2 (non-contiguous, different for K and V)."""
    src = _src()
    d = C // H
    with torch.no_grad():
        for blk in src.blocks:
            wk, wv = blk.attn.kv.weight.unflatten(0, (2, H, d))  # views
            wk[2], wk[3] = wk[0], wk[1]
            wv[3], wv[2] = wv[0], wv[1]
    return src


def test_dha_groups_similar_heads_where_gqa_pools_contiguous_ones() -> None:
    """DHA's similarity grouping finds the duplicated heads (decoupled K and V maps) and fuses
    them losslessly at half the KV cache; GQA's contiguous mean-pool at the same budget does not."""
    src, x = _duplicated_heads(), _tokens()
    dha = convert_model(src, "dha", 2, 2)
    attn = dha.blocks[0].attn
    assert attn.kmap == (0, 1, 0, 1) and attn.vmap == (0, 1, 1, 0)
    torch.testing.assert_close(dha(x), src(x))
    gqa = convert_model(src, "gqa", 2, 2)
    assert gqa.blocks[0].attn.kmap == gqa.blocks[0].attn.vmap == (0, 0, 1, 1)
    assert not torch.allclose(gqa(x), src(x))
    assert kv_bytes(dha, N) == kv_bytes(gqa, N) == kv_bytes(src, N) / 2


def test_gqa_conversion_is_the_mean_pool() -> None:
    src = _src()
    layer = convert_layer(src.blocks[0].attn, "gqa", 2, 2)
    d = C // H
    wk = src.blocks[0].attn.kv.weight.unflatten(0, (2, H, d))[0]
    torch.testing.assert_close(layer.k.weight.unflatten(0, (2, d)), torch.stack([wk[:2].mean(0), wk[2:].mean(0)]))
    with pytest.raises(ValueError, match="mean-pooled"):
        convert_layer(src.blocks[0].attn, "gqa", 3, 3)


def test_suite_runs_on_the_dha_row_with_both_conversions() -> None:
    suite = SUITES.get("kv_convert")
    assert suite.applies_to(METHODS.get("mha"), METHODS.get("mha").backends[0])
    section = {"methods": ["dha"], "steps": 6, "uptrain_steps": 2, "n_train": 128, "n_test": 16, "batch_size": 8,
               "d_model": 16, "n_heads": 4, "seq_len": 32, "vocab": 64, "warmup": 1}
    cases = suite.cases(Preset("smoke", {"suite": {"kv_convert": {**section, "tasks": ["mqar", "niah"]}}}), METHODS)
    assert [c.method for c in cases] == ["dha", "dha"]
    rows = {r.metric: r.value for r in suite.run(ResolvedCase.resolve(cases[0], METHODS))}
    for how in ("dha", "gqa"):
        for p in (25, 50):
            assert 0 <= rows[f"kvc_mqar_acc_{how}_kv{p}"] <= 1
            assert rows[f"kvc_mqar_kv_bytes_{how}_kv{p}"] == rows["kvc_mqar_kv_bytes_src"] * p / 100
            assert f"kvc_mqar_retained0_{how}_kv{p}" in rows
    niah = {r.metric for r in suite.run(ResolvedCase.resolve(cases[1], METHODS))}
    assert "kvc_niah_retained_dha_kv25" in niah
