"""Interventions applied to a trained Shapes-VLM as their papers apply them (model level, at inference).

`applied(model, method, params, backend)` returns a model with the same `(patches, text) → logits`
interface (same weights):
    softpag        guided decoding `(1 + w)·logits_orig − w·logits_perturbed` (`guidance` = w), the
                   perturbed model = SoftPAG's attention maps in every decoder layer
    var            sinks detected per sequence from each decoder block's input hidden states (massive
                   activation, `sink_tau`), last layer left as is (`except_last_layer`)
    vhr            true VHD: a second forward without the image gives each layer's head outputs at the last
                   position (`noimg_last`); reinforcement layer by layer in the image forward
    gift           saliency once at `sal_layer` (query rows = the text), gains on the decode row (last position)
                   in the later `layer_range`
    imbalance_fix  token streams from the image encoder's CLS attention (its first and last layers), the
                   last-row edit in the decoder layers `layer_range`
    others         `attnbench.intervene.apply_intervention` (every decoder layer)
`true_vhd(model, patches, text)` is the per-layer × per-head VHD `[B, L, H]` of the two forwards, and T-VHD
its sum over layers and heads (`impls/vhr.t_vhd`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from attnbench import intervene as iv
from attnbench.impls import gift as gift_impl
from attnbench.impls.var import detect_sinks
from attnbench.impls.vhr import vhd
from attnbench.layers import AttentionLayer


def decoder_layers(model: nn.Module) -> list[AttentionLayer]:
    """The decoder's attention layers (the image encoder's are torch's own and never wrapped)."""
    return [m for m in model.modules() if isinstance(m, AttentionLayer)]


def head_outputs(model: nn.Module, *inputs: Any) -> tuple[Any, list[torch.Tensor]]:
    """Run `model(*inputs)` without grad; per decoder layer the head outputs `[B, N, H, D]` (before W_O)."""
    layers = decoder_layers(model)
    got: list[torch.Tensor | None] = [None] * len(layers)
    handles = []
    for i, lay in enumerate(layers):
        def pre(mod: nn.Module, args: tuple[torch.Tensor], i: int = i, lay: AttentionLayer = lay) -> None:
            x = args[0]
            got[i] = x.detach().view(*x.shape[:2], lay.n_heads, lay.head_dim)
        handles.append(lay.out.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            out = model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return out, [g for g in got if g is not None]


def true_vhd(model: nn.Module, patches: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """VHD `[B, L, H]` as the paper computes it: L2 between the last position's head outputs of the forward with
    the image and of a second forward without it (text only, same text positions)."""
    _, with_img = head_outputs(model, patches, text)
    _, without = head_outputs(model, None, text)
    return torch.stack([vhd(a[:, -1], b[:, -1]) for a, b in zip(with_img, without, strict=True)], 1)


class _Hooked(nn.Module):
    """A wrapped model whose forward first runs `prepare(*inputs)` (sets per-input params), then the model."""

    def __init__(self, model: nn.Module, prepare: Callable[..., None]) -> None:
        super().__init__()
        self.model, self.prepare = model, prepare

    def forward(self, patches: torch.Tensor | None, text: torch.Tensor) -> torch.Tensor:
        self.prepare(patches, text)
        return self.model(patches, text)


def _var(model: nn.Module, p: dict[str, Any], backend: str) -> nn.Module:
    out = iv.apply_intervention(model, "var", p, backend=backend)
    if not p.get("detect", True):
        return out
    blocks = [blk for blk in out.blocks if isinstance(blk.attn, AttentionLayer) and blk.attn.entry.name == "var"]
    seen = out.activity = {"calls": 0.0, "active": 0.0}  # sequences × layers, and those with a sink to act on
    for blk in blocks:
        def pre(mod: nn.Module, args: tuple[torch.Tensor]) -> None:
            sinks = detect_sinks(args[0], p.get("sink_tau", 20.0), p.get("sink_dims"))
            mod.attn.params["sinks"] = sinks
            seen["calls"] += sinks.shape[0]
            seen["active"] += float(sinks.any(-1).sum())
        blk.register_forward_pre_hook(pre)
    return out


def active_fraction(model: nn.Module) -> float | None:
    """Share of (sequence, layer) calls in which an input-gated intervention (VAR: a detected sink) had
    anything to act on; None for interventions that always act. 0 means the row equals the base by
    construction, which the board must show rather than read as "no effect"."""
    seen = getattr(model, "activity", None)
    return seen["active"] / seen["calls"] if seen and seen["calls"] else None


def _vhr(model: nn.Module, p: dict[str, Any], backend: str) -> nn.Module:
    out = iv.apply_intervention(model, "vhr", p, backend=backend)
    layers = iv.wrapped_layers(out, "vhr")

    def prepare(patches: torch.Tensor | None, text: torch.Tensor) -> None:
        _, without = head_outputs(model, None, text)  # the unmodified model, image removed
        for lay, o in zip(layers, without, strict=True):
            lay.params["noimg_last"] = o[:, -1]  # [B, H, D]

    return _Hooked(out, prepare)


def _gift(model: nn.Module, p: dict[str, Any], backend: str) -> nn.Module:
    n_layers = len(decoder_layers(model))
    ls, (lo, hi) = gift_impl.paper_layers(n_layers, p.get("sal_layer"), p.get("layer_range"))
    out = iv.apply_intervention(model, "gift", {**p, "rows": [-1]}, backend=backend,
                                layers={i: {} for i in range(lo, min(hi, n_layers))})
    sal_layer, edited = decoder_layers(out)[ls], iv.wrapped_layers(out, "gift")
    store: dict[str, torch.Tensor] = {}

    def grab(name: str) -> Callable[..., None]:
        def hook(mod: nn.Module, inp: Any, o: torch.Tensor) -> None:
            store[name] = o.detach()
        return hook

    sal_layer.q.register_forward_hook(grab("q"))
    sal_layer.kv.register_forward_hook(grab("kv"))

    def after(mod: AttentionLayer, inp: Any, o: torch.Tensor) -> None:
        b, n, _ = store["q"].shape
        q = store["q"].view(b, n, mod.n_heads, mod.head_dim).transpose(1, 2)
        k = store["kv"].view(b, n, 2, mod.kv_heads, mod.head_dim).permute(2, 0, 3, 1, 4)[0]
        k = k.repeat_interleave(mod.n_heads // mod.kv_heads, 1)
        params = {"base": mod.entry.name, "base_params": {k: v for k, v in mod.params.items() if k != "spatial"}}
        img = iv.img_mask(p.get("img_span"), n, q.device)
        rows = gift_impl.query_rows(p.get("query_span"), n)
        sal = gift_impl.saliency_of(iv.rows_probs(q.float(), k.float(), mod.causal, params, rows), img,
                                    p.get("head_frac", 0.5))
        for lay in edited:
            lay.params["saliency"] = sal

    sal_layer.register_forward_hook(after)
    return out


def _imbalance_fix(model: nn.Module, p: dict[str, Any], backend: str) -> nn.Module:
    n_layers = len(decoder_layers(model))
    lo, hi = p.get("layer_range") or (0, n_layers)
    out = iv.apply_intervention(model, "imbalance_fix", p, backend=backend,
                                layers={i: {} for i in range(lo, min(hi, n_layers))})
    edited = iv.wrapped_layers(out, "imbalance_fix")
    enc = list(out.encoder)
    picks = sorted({min(1, len(enc) - 1), max(len(enc) - 2, 0)})  # the paper's encoder layers 1 and L−1

    def after(mod: nn.Module, inp: Any, o: torch.Tensor) -> None:
        if mod is not enc[picks[-1]]:
            return
        cls = torch.stack([enc[i].cls_attn for i in picks]).mean(0).sum(1)[:, 1:]  # [B, P], heads summed
        for lay in edited:
            lay.params["stream_scores"] = cls

    for blk in enc:
        blk.register_forward_hook(after)
    return out


def _softpag(model: nn.Module, p: dict[str, Any], backend: str) -> nn.Module:
    return iv.Guided(model, iv.apply_intervention(model, "softpag", p, backend=backend), p.get("guidance", 3.0))


APPLY: Mapping[str, Callable[[nn.Module, dict[str, Any], str], nn.Module]] = {
    "softpag": _softpag, "var": _var, "vhr": _vhr, "gift": _gift, "imbalance_fix": _imbalance_fix}


def applied(model: nn.Module, method: str, params: Mapping[str, Any], backend: str = "reference") -> nn.Module:
    """`model` with the intervention `method` applied as its paper does (see the module doc)."""
    fn = APPLY.get(method)
    p = dict(params)
    return fn(model, p, str(backend)) if fn else iv.apply_intervention(model, method, p, backend=str(backend))
