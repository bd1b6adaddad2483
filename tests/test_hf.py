"""attnbench methods served inside a tiny Hugging Face Llama (attnbench.hf), and the GQA/DHA conversions."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from lm_fixture import build_tiny_lm  # noqa: E402

from attnbench import hf  # noqa: E402
from attnbench.registry import METHODS, load_plugins  # noqa: E402
from attnbench.spec import Workload  # noqa: E402

TEXT = "the pass key is 1234 . remember it . what is the key"  # 14 tokens
SMALL = {"sliding_window": {"window": 8}, "gna": {"kernel_size": 4, "stride": 4}, "moba": {"block_size": 4, "topk": 2},
         "dma": {"window": 4}}  # defaults sized for long contexts, shrunk to the 14-token prompt


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_lm")
    return {"gqa": build_tiny_lm(root / "gqa"), "mha": build_tiny_lm(root / "mha", kv_heads=4, seed=1)}


@pytest.fixture
def lm(folders):
    model, tok = hf.load(folders["gqa"])
    model.set_attn_implementation("sdpa")
    return model, tok, tok(TEXT, return_tensors="pt").input_ids


def logits(model, ids, **kw):
    with torch.no_grad():
        return model(ids, **kw).logits


def test_mha_reproduces_sdpa(lm):
    model, _, ids = lm
    ref = logits(model, ids)
    assert hf.apply(model, "mha") is model and model.config._attn_implementation.startswith("attnbench_mha_")
    torch.testing.assert_close(logits(model, ids), ref, atol=1e-5, rtol=0)


def test_other_scaling_prescales_q(lm):
    model, _, ids = lm
    for m in hf.attention_modules(model):
        m.scaling *= 0.5
    ref = logits(model, ids)
    hf.apply(model, "mha")
    torch.testing.assert_close(logits(model, ids), ref, atol=1e-5, rtol=0)


def test_sliding_window(lm):
    model, _, ids = lm
    n = ids.shape[1]
    ref = logits(model, ids)
    hf.apply(model, "sliding_window", window=n)
    torch.testing.assert_close(logits(model, ids), ref, atol=1e-5, rtol=0)
    w = 5
    hf.apply(model, "sliding_window", window=w)
    out = logits(model, ids)
    torch.testing.assert_close(out[:, :w], ref[:, :w], atol=1e-5, rtol=0)
    assert bool(((out[:, w:] - ref[:, w:]).abs().amax(-1) > 1e-4).all())


def test_generation_with_kv_cache_matches_sdpa(lm):
    model, _, ids = lm
    ref = model.generate(ids, max_new_tokens=5, do_sample=False)
    hf.apply(model, "mha")
    assert model.generation_config.use_cache
    torch.testing.assert_close(model.generate(ids, max_new_tokens=5, do_sample=False), ref, atol=0, rtol=0)


def test_prefill_only_method_generates_without_cache(lm):
    model, _, ids = lm
    assert hf.why_not("moba", model.config, cache=True).startswith("moba cannot decode against a KV cache")
    hf.apply(model, "moba", **SMALL["moba"])
    assert not model.generation_config.use_cache
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3
    hf.apply(model, "mha")
    assert model.generation_config.use_cache and model.config.use_cache


def test_right_padding_exact_left_padding_refused(lm):
    model, tok, ids = lm
    n = ids.shape[1]
    pad = torch.full((1, 3), tok.pad_token_id)
    ones, zeros = torch.ones(1, n, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long)
    batch = torch.cat([torch.cat([ids, pad], 1), torch.cat([ids[:, :n - 3], pad[:, :3], pad], 1)])
    mask = torch.cat([torch.cat([ones, zeros], 1), torch.cat([ones[:, :n - 3], zeros, zeros], 1)])
    ref = logits(model, batch, attention_mask=mask)
    hf.apply(model, "mha")
    out = logits(model, batch, attention_mask=mask)
    torch.testing.assert_close(out[0, :n], ref[0, :n], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1, :n - 3], ref[1, :n - 3], atol=1e-5, rtol=0)
    left = torch.cat([zeros, ones], 1)
    with pytest.raises(NotImplementedError, match="mha cannot take a padding mask"):
        logits(model, torch.cat([pad, ids], 1), attention_mask=left)


def test_bfloat16(lm):
    model, _, ids = lm
    model.to(torch.bfloat16)
    ref = logits(model, ids).float()
    hf.apply(model, "mha")
    torch.testing.assert_close(logits(model, ids).float(), ref, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize(("method", "reason"), [("agent", "no causal form"), ("paro", "no causal form"),
                                                ("moh", "layer method"), ("dcal", "no causal form"),
                                                ("dha", "to_dha")])
def test_refuses_unservable(lm, method, reason):
    model = lm[0]
    why = hf.why_not(method, model.config)
    assert why is not None and reason in why
    with pytest.raises(ValueError, match=reason):
        hf.apply(model, method)
    assert hf.servable(model.config)[method] == why


def test_refuses_too_few_kv_heads(lm):
    assert "to_gqa" in hf.why_not("mqa", lm[0].config)
    with pytest.raises(ValueError, match="unknown parameter"):
        hf.apply(lm[0], "mha", window=3)


def _servable() -> list[str]:
    load_plugins()
    return [name for name, why in hf.servable().items() if why is None]


@pytest.mark.parametrize("method", _servable())
def test_every_servable_method_runs(folders, method):
    model, tok = hf.load(folders["gqa"])
    params = SMALL.get(method, {})
    spec = METHODS.get(method).spec
    want = spec.shape(Workload(heads_q=4, heads_kv=2, seq_q=16, seq_kv=16, causal=True), spec.params(params)).heads_kv
    if want < 2:
        hf.to_gqa(model, want)
    hf.apply(model, method, **params)
    ids = tok(TEXT, return_tensors="pt").input_ids
    assert torch.isfinite(logits(model, ids)).all()
    assert model.generate(ids, max_new_tokens=2, do_sample=False).shape[1] == ids.shape[1] + 2


# ---- conversions --------------------------------------------------------------------------------------------
def test_to_gqa_same_heads_is_identity(lm):
    model, _, ids = lm
    ref = logits(model, ids)
    hf.to_gqa(model, 2)
    torch.testing.assert_close(logits(model, ids), ref, atol=0, rtol=0)


def test_to_gqa_mean_pools_and_mqa_runs(folders):
    model, tok = hf.load(folders["mha"])
    ids = tok(TEXT, return_tensors="pt").input_ids
    wk = model.model.layers[0].self_attn.k_proj.weight.detach().clone()
    hf.to_gqa(model, 2)
    attn = model.model.layers[0].self_attn
    d = attn.head_dim
    expect = wk.unflatten(0, (2, 2, d)).mean(1).flatten(0, 1)
    torch.testing.assert_close(attn.k_proj.weight, expect)
    assert model.config.num_key_value_heads == 2 and attn.num_key_value_groups == 2
    hf.to_gqa(model, 1)
    assert attn.k_proj.out_features == d and attn.num_key_value_groups == 4
    model.set_attn_implementation("sdpa")
    ref = logits(model, ids)
    hf.apply(model, "mqa")
    torch.testing.assert_close(logits(model, ids), ref, atol=1e-5, rtol=0)
    assert model.generate(ids, max_new_tokens=2, do_sample=False).shape[1] == ids.shape[1] + 2


def test_to_dha_one_head_per_group_is_the_source(lm):
    model, _, ids = lm
    ref = logits(model, ids)
    hf.to_dha(model, 2, 2)
    assert model.model.layers[0].self_attn.attnbench_kmap == (0, 0, 1, 1)
    torch.testing.assert_close(logits(model, ids), ref, atol=1e-5, rtol=0)


def test_to_dha_decoupled_groups_and_cache(folders):
    model, tok = hf.load(folders["mha"])
    ids = tok(TEXT, return_tensors="pt").input_ids
    attn = model.model.layers[0].self_attn
    d = attn.head_dim
    torch.manual_seed(0)
    with torch.no_grad():  # key head 2 ≈ key head 0; value head 3 ≈ value head 1
        attn.k_proj.weight[2 * d:3 * d] = attn.k_proj.weight[:d] + 1e-3 * torch.randn(d, 64)
        attn.v_proj.weight[3 * d:] = attn.v_proj.weight[d:2 * d] + 1e-3 * torch.randn(d, 64)
        expect_k = (attn.k_proj.weight[:d] + attn.k_proj.weight[2 * d:3 * d]) / 2
    hf.to_dha(model, 3, 3)
    assert attn.attnbench_kmap == (0, 1, 0, 2) and attn.attnbench_vmap == (0, 1, 2, 1)
    torch.testing.assert_close(attn.k_proj.weight[:d], expect_k)
    out = model(ids, use_cache=True)
    layer = out.past_key_values.layers[0]
    assert layer.keys.shape[1] == 3 and layer.values.shape[1] == 3
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3
    hf.to_dha(model, 1, 2)  # fuse further: maps compose
    assert attn.attnbench_kmap == (0, 0, 0, 0) and len(set(attn.attnbench_vmap)) == 2
    assert torch.isfinite(logits(model, ids)).all()


def test_similarity_groups():
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])
    assert hf.similarity_groups(rows, 4) == [[0], [1], [2], [3]]
    assert hf.similarity_groups(rows, 2) == [[0, 2], [1, 3]]
    with pytest.raises(ValueError):
        hf.similarity_groups(rows, 5)


@pytest.mark.parametrize(("method", "backend"), [("mha", "flex"), ("gqa", "sdpa"), ("sliding_window", "native")])
def test_fused_backends_match_reference(lm, method, backend):
    model, _, ids = lm
    params = SMALL.get(method, {})
    hf.apply(model, method, **params)
    ref, gen = logits(model, ids), model.generate(ids, max_new_tokens=3, do_sample=False)
    hf.apply(model, method, backend, **params)
    torch.testing.assert_close(logits(model, ids), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.generate(ids, max_new_tokens=3, do_sample=False), gen, atol=0, rtol=0)
    if backend == "flex":  # no backward on CPU: refused per call while gradients are on
        with pytest.raises(ValueError, match="backward"):
            model(ids)
