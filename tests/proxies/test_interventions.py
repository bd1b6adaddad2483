"""Interventions applied to a Shapes-VLM as their papers apply them (suites/hallucination/apply.py), on small
untrained models: guidance, detected sinks, true VHD, layer ranges and decode rows."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnbench import intervene as iv
from attnbench.layers import build_layer
from attnbench.suites.hallucination import apply as ap
from attnbench.suites.hallucination.model import Vocab, build

OPTS = dict(image=16, patch=8, n_classes=10, max_objects=4, d_model=16, n_layers=3, n_heads=2, enc_layers=2)
N_IMG = 4


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build("mha", "reference", {}, OPTS, 8 * 8 * 3).double().eval()


def _inputs(b: int = 3, t: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    voc = Vocab(10)
    text = torch.randint(0, 10, (b, t), generator=g)
    text[:, 0] = voc.bos
    return torch.rand(b, N_IMG, 192, generator=g, dtype=torch.float64), text


def _params(method: str, **kw) -> dict:
    from attnbench.registry import METHODS

    p = {k: v for k, v in METHODS.get(method).spec.params().items() if k not in ("base", "base_params")}
    if "img_span" in p:
        p["img_span"] = [0, N_IMG]
    if "query_span" in p:
        p["query_span"] = [N_IMG, N_IMG + 6]
    return {**p, **kw}


def test_softpag_guidance_zero_and_identity_are_base():
    m, (x, t) = _model(), _inputs()
    with torch.no_grad():
        base = m(x, t)
        torch.testing.assert_close(ap.applied(m, "softpag", _params("softpag", guidance=0.0))(x, t), base)
        for w in (1.0, 3.0):
            torch.testing.assert_close(ap.applied(m, "softpag", _params("softpag", strength=0.0, guidance=w))(x, t),
                                       base)
        assert not torch.allclose(ap.applied(m, "softpag", _params("softpag"))(x, t), base)


def test_var_detects_the_planted_bos_sink():
    m, (x, t) = _model(), _inputs()
    with torch.no_grad():
        m.tok.weight[Vocab(10).bos, 5] = 300.0  # BOS carries a massive activation in channel 5
        out = ap.applied(m, "var", _params("var"))
        out(x, t)
    layers = iv.wrapped_layers(out, "var")
    assert len(layers) == OPTS["n_layers"] - 1  # except_last_layer
    want = torch.zeros(3, N_IMG + 4, dtype=torch.bool)
    want[:, N_IMG] = True  # the BOS position, not image patch 0
    assert torch.equal(layers[0].params["sinks"], want)
    assert ap.active_fraction(out) == 1.0  # every sequence in every VAR layer had a sink to act on
    with torch.no_grad():
        m.tok.weight[Vocab(10).bos, 5] = 0.0
        out = ap.applied(m, "var", _params("var"))
        torch.testing.assert_close(out(x, t), m(x, t))  # no sink detected: VAR leaves the model as is
    assert not bool(iv.wrapped_layers(out, "var")[0].params["sinks"].any())
    assert ap.active_fraction(out) == 0.0  # reported, so the board can say the row equals the base by construction
    assert ap.active_fraction(ap.applied(m, "softpag", _params("softpag"))) is None  # always acts: no row


class TwoStream(nn.Module):
    """Patches and text embedded without positions or norms into generic attention layers (true-VHD probe)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.patch, self.tok = nn.Linear(4, 16), nn.Embedding(10, 16)
        self.layers = nn.ModuleList(build_layer("mha", "reference", 16, 2, causal=True) for _ in range(2))

    def forward(self, patches: torch.Tensor | None, text: torch.Tensor) -> torch.Tensor:
        h = self.tok(text) if patches is None else torch.cat([self.patch(patches), self.tok(text)], 1)
        for lay in self.layers:
            h = h + lay(h)
        return h[:, -text.shape[1]:]


def test_true_vhd_is_zero_for_a_head_that_ignores_the_image():
    m = TwoStream().double()
    with torch.no_grad():
        m.patch.weight[0], m.patch.bias[0] = 0.0, 0.0  # image tokens: channel 0 is 0
        m.tok.weight[:, 0] = 1.0  # text tokens: channel 0 is 1
        lay = m.layers[0]
        lay.q.weight[8:], lay.kv.weight[8:16] = 0.0, 0.0  # head 1 (dims 8…15): q and k read channel 0 only
        lay.q.weight[8, 0], lay.kv.weight[8, 0] = 60.0, 60.0  # text keys score ~1270 above image keys
    g = torch.Generator().manual_seed(0)
    patches, text = torch.randn(2, 5, 4, generator=g, dtype=torch.float64), torch.randint(0, 10, (2, 3), generator=g)
    score = ap.true_vhd(m, patches, text)  # [B, L, H]
    assert score.shape == (2, 2, 2)
    assert float(score[:, 0, 1].abs().max()) == 0.0  # ignores the image: no divergence
    assert float(score[:, 0, 0].min()) > 0.0 and float(score[:, 1].min()) > 0.0


@pytest.mark.parametrize("method,kw", [("gift", {"sal_layer": 0, "layer_range": [2, 3]}),
                                       ("imbalance_fix", {"layer_range": [2, 3]})])
def test_layers_and_rows_outside_the_range_untouched(method, kw):
    m, (x, t) = _model(), _inputs()
    out = ap.applied(m, method, _params(method, **kw))
    _, base = ap.head_outputs(m, x, t)
    _, got = ap.head_outputs(out, x, t)
    for li in (0, 1):
        torch.testing.assert_close(got[li], base[li], rtol=0, atol=0)  # layers before the range: exact
    torch.testing.assert_close(got[2][:, :-1], base[2][:, :-1], rtol=0, atol=0)  # rows before the decode row
    assert not torch.allclose(got[2][:, -1], base[2][:, -1])  # the decode row of the edited layer changes
    with torch.no_grad():
        lg, lb = out(x, t), m(x, t)
    torch.testing.assert_close(lg[:, :-1], lb[:, :-1], rtol=0, atol=0)


def test_imbalance_fix_streams_come_from_the_encoder_cls_attention():
    m, (x, t) = _model(), _inputs()
    out = ap.applied(m, "imbalance_fix", _params("imbalance_fix"))
    with torch.no_grad():
        out(x, t)
    cls = torch.stack([blk.cls_attn for blk in out.encoder]).mean(0).sum(1)[:, 1:]
    for lay in iv.wrapped_layers(out, "imbalance_fix"):
        torch.testing.assert_close(lay.params["stream_scores"], cls)


def test_vhr_uses_the_image_free_forward_and_alpha_one_is_base():
    m, (x, t) = _model(), _inputs()
    out = ap.applied(m, "vhr", _params("vhr"))
    with torch.no_grad():
        out(x, t)
    _, without = ap.head_outputs(m, None, t)
    for lay, o in zip(iv.wrapped_layers(out, "vhr"), without, strict=True):
        torch.testing.assert_close(lay.params["noimg_last"], o[:, -1])
    with torch.no_grad():
        torch.testing.assert_close(ap.applied(m, "vhr", _params("vhr", alpha=1.0))(x, t), m(x, t))
