"""lm-eval model types for attnbench (lm_eval and transformers are imported only when used).

`register()` registers two model types with `lm_eval.api.registry.register_model`:

    attnbench        a Hugging Face causal LM with its attention swapped by `attnbench.hf.apply`
                     (a subclass of lm-eval's `HFLM`): `pretrained=/path,method=sliding_window,window=1024,
                     backend=reference`. `method` and `backend` (attnbench's backend, not HFLM's) select the
                     swap; the method's own parameters come from the remaining keys, checked against the
                     method's defaults and cast to their types; every other key must be an `HFLM` argument
                     (`batch_size`, `device`, `dtype`, `max_length`, …). No `method` = the stock model.
                     lm-eval 0.4.13's HFLM needs `accelerate` (lm-eval's [hf] extra); without it the base is a
                     minimal local-files-only wrapper (one request at a time, no padding) taking `tokenizer`,
                     `device`, `batch_size`, `max_length`, `dtype`.
    attnbench-proxy  an attnbench proxy model (`attnbench.proxy.train.ProxyModel`) saved with `save_proxy`
                     (or a whole `torch.save`d ProxyModel): `path=/ckpt.pt[,device=cpu][,max_length=N]`.

The proxy "tokenizer": text is whitespace-separated integer token ids (`"12 40 10 3 4 5 11"`), each
id < the model's vocabulary; generated text is the ids joined by single spaces. The proxies have no BOS
token, so a continuation with an empty context loses its first token, and `loglikelihood_rolling` scores
every token but the first, in disjoint windows of `max_length` (the learned-position length, else the
whole text).

lm-eval 0.4.13 has no entry-point group for models, so the stock CLI cannot find these types by itself:
`python -m attnbench.lmeval <lm-eval arguments>` registers them, then runs lm-eval's own CLI, e.g.
`python -m attnbench.lmeval run --model attnbench --model_args pretrained=/m,method=mha --tasks attnbench_niah
--include_path <folder from attnbench.tasks.export_tasks>`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from pathlib import Path
from typing import Any

PROXY_FORMAT = "attnbench-proxy/1"


def generation_request(r: Any) -> tuple[str, dict[str, Any], list[str]]:
    """A `generate_until` request as (context, generation kwargs, stop strings)."""
    ctx, kw = r.args[0], dict(r.args[1] or {})
    until = kw.get("until") or []
    return ctx, kw, [until] if isinstance(until, str) else list(until)

def register() -> tuple[type, type]:
    """Register `attnbench` and `attnbench-proxy` with lm-eval (idempotent); returns the two classes."""
    from lm_eval.api.registry import register_model

    hf_cls, proxy_cls = _classes()
    register_model("attnbench")(hf_cls)
    register_model("attnbench-proxy")(proxy_cls)
    return hf_cls, proxy_cls


def __getattr__(name: str) -> Any:  # AttnbenchLM / ProxyLM, defined on first use
    if name in ("AttnbenchLM", "ProxyLM"):
        return _classes()[name == "ProxyLM"]
    raise AttributeError(name)


def method_params(method: str, raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` model_args as the method's parameters: names checked, values cast to the defaults' types."""
    from attnbench.registry import METHODS, load_plugins

    load_plugins()
    spec = METHODS.get(method).spec
    defaults = spec.params({})
    out = {}
    for k, v in raw.items():
        if k not in defaults:
            raise ValueError(f"{method}: unknown parameter {k!r}; known: {sorted(defaults)}")
        out[k] = _cast(v, defaults[k], f"{method}.{k}")
    spec.params(out)
    return out


def _cast(v: Any, default: Any, where: str) -> Any:
    kind = type(default)
    if default is None or isinstance(v, kind) and not (kind is int and isinstance(v, bool)):
        return v
    try:
        if kind is bool:
            if str(v).lower() not in ("true", "false", "1", "0"):
                raise ValueError(v)
            return str(v).lower() in ("true", "1")
        if kind is int and float(v) != int(float(v)):
            raise ValueError(v)
        return kind(float(v)) if kind is int else kind(v)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {v!r} is not a {kind.__name__}") from None


def save_proxy(model: Any, path: str | Path) -> Path:
    """Save a ProxyModel as `{"format", "config", "state_dict"}` for the `attnbench-proxy` model type."""
    import torch

    path = Path(path)
    torch.save({"format": PROXY_FORMAT, "config": dataclasses.asdict(model.cfg), "state_dict": model.state_dict()},
               path)
    return path


def load_proxy(path: str | Path, device: str = "cpu") -> Any:
    """A ProxyModel from `save_proxy`'s file or a whole `torch.save`d ProxyModel, in eval mode."""
    import torch

    from attnbench.proxy.train import ModelConfig, ProxyModel
    from attnbench.registry import load_plugins

    load_plugins()
    obj = torch.load(path, map_location=device, weights_only=False)
    if isinstance(obj, ProxyModel):
        return obj.eval()
    if not isinstance(obj, dict) or obj.get("format") != PROXY_FORMAT:
        raise ValueError(f"{path} is neither a ProxyModel nor a {PROXY_FORMAT} checkpoint (see save_proxy)")
    cfg = dict(obj["config"])
    if cfg.get("spatial") is not None:
        cfg["spatial"] = tuple(cfg["spatial"])
    model = ProxyModel(ModelConfig(**cfg)).to(device)
    model.load_state_dict(obj["state_dict"])
    return model.eval()


def encode(text: str, vocab: int | None = None) -> list[int]:
    """Whitespace-separated integer token ids (ValueError on anything else or an id out of the vocabulary)."""
    try:
        ids = [int(t) for t in text.split()]
    except ValueError:
        raise ValueError(f"attnbench-proxy takes whitespace-separated integer token ids, got {text[:60]!r}") from None
    if vocab is not None and any(not 0 <= t < vocab for t in ids):
        raise ValueError(f"token id out of the proxy vocabulary [0, {vocab}) in {text[:60]!r}")
    return ids


@functools.cache
def _classes() -> tuple[type, type]:
    import torch
    from lm_eval.api.model import LM, TemplateLM

    try:
        from lm_eval.models.huggingface import HFLM as Base
    except ImportError:  # lm-eval ≥ 0.4.13 without its [hf] extra (accelerate): a plain HF wrapper instead
        Base = _plain_hf(TemplateLM, torch)
    base_args = set(inspect.signature(Base.__init__).parameters) - {"self", "kwargs", "pretrained", "backend"}

    class AttnbenchLM(Base):  # type: ignore[misc, valid-type]
        """lm-eval's HFLM whose model gets `attnbench.hf.apply(model, method, backend, **params)` after loading."""

        def __init__(self, pretrained: Any, method: str | None = None, backend: str = "reference",
                     **kwargs: Any) -> None:
            rest = {k: v for k, v in kwargs.items() if k not in base_args}
            swap = method not in (None, "", "none")
            if rest and not swap:
                raise ValueError(f"unknown model_args {sorted(rest)}: not {Base.__name__} arguments, and no method")
            self._swap = (str(method), str(backend), method_params(str(method), rest)) if swap else None
            if not isinstance(pretrained, str):
                pretrained = self._apply(pretrained)
            hf_kw = {k: v for k, v in kwargs.items() if k in base_args}
            super().__init__(pretrained=pretrained, backend="causal", **hf_kw)

        def _apply(self, model: Any) -> Any:
            if self._swap is None:
                return model
            from attnbench import hf

            method, backend, params = self._swap
            return hf.apply(model, method, backend, **params)

        def _create_model(self, *args: Any, **kwargs: Any) -> None:
            super()._create_model(*args, **kwargs)
            self._model = self._apply(self._model)

    proxy = _proxy_lm(LM, torch)
    for cls, name in ((AttnbenchLM, "AttnbenchLM"), (proxy, "ProxyLM")):
        cls.__module__, cls.__name__, cls.__qualname__ = __name__, name, name
    return AttnbenchLM, proxy


def _plain_hf(TemplateLM: type, torch: Any) -> type:
    """A minimal lm-eval LM over a Hugging Face causal LM (one request at a time, no padding)."""

    class PlainHF(TemplateLM):  # type: ignore[misc, valid-type]
        def __init__(self, pretrained: Any, backend: str = "causal", tokenizer: Any = None, device: str | None = None,
                     batch_size: int | str | None = 1, max_batch_size: int | None = None,
                     max_length: int | None = None, dtype: str | None = None) -> None:
            super().__init__()
            from transformers import AutoTokenizer

            if isinstance(pretrained, str):
                self._create_model(pretrained=pretrained, dtype=dtype)
                dev = device if device and (torch.cuda.is_available() or not device.startswith("cuda")) else \
                    ("cuda" if torch.cuda.is_available() else "cpu")
                self._model.to(dev)
            else:
                self._model = pretrained
            self._model.eval()
            name = pretrained if isinstance(pretrained, str) else self._model.name_or_path
            tok = name if tokenizer is None else tokenizer
            self.tokenizer = AutoTokenizer.from_pretrained(tok, local_files_only=True) if isinstance(tok, str) else tok
            cfg = self._model.config
            self.max_length = int(max_length or getattr(cfg, "max_position_embeddings", 2048))

        def _create_model(self, pretrained: str, dtype: str | None = None, **_: Any) -> None:
            from transformers import AutoModelForCausalLM

            kw = {"dtype": getattr(torch, dtype)} if dtype not in (None, "auto") else {}
            self._model = AutoModelForCausalLM.from_pretrained(pretrained, local_files_only=True, **kw)

        @property
        def model(self) -> Any:
            return self._model

        @property
        def device(self) -> Any:
            return self._model.device

        @property
        def eot_token_id(self) -> int:
            return self.tokenizer.eos_token_id

        @property
        def prefix_token_id(self) -> int:
            bos = self.tokenizer.bos_token_id
            return bos if bos is not None else self.eot_token_id

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kw: Any) -> list[int]:
            return self.tokenizer.encode(string, add_special_tokens=bool(add_special_tokens))

        def _loglikelihood_tokens(self, requests: list[Any], disable_tqdm: bool = False, **kw: Any
                                  ) -> list[tuple[float, bool]]:
            out = []
            with torch.no_grad():
                for _, ctx, cont in requests:
                    seq = (list(ctx) + list(cont))[-(self.max_length + 1):][:-1]
                    logits = self._model(torch.tensor([seq], device=self.device)).logits[0, -len(cont):]
                    lp = torch.log_softmax(logits.float(), -1)
                    t = torch.tensor(cont, device=lp.device)
                    out.append((float(lp.gather(1, t[:, None]).sum()), bool((lp.argmax(-1) == t).all())))
            return out

        def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
            from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

            out = []
            for r in requests:
                windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                    self.tok_encode(r.args[0]), self.prefix_token_id, self.max_length, 1)]
                out.append(sum(ll for ll, _ in self._loglikelihood_tokens([(None, c, t) for c, t in windows])))
            return out

        def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
            out = []
            for r in requests:
                ctx, kw, until = generation_request(r)
                ids = self.tok_encode(ctx)[-self.max_length:]
                x = torch.tensor([ids], device=self.device)
                with torch.no_grad():
                    gen = self._model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                                               max_new_tokens=int(kw.get("max_gen_toks", 256)),
                                               pad_token_id=self.tokenizer.pad_token_id or self.eot_token_id)
                text = self.tokenizer.decode(gen[0, len(ids):], skip_special_tokens=True)
                out.append(text[:min((text.index(u) for u in until if u and u in text), default=len(text))])
            return out

    return PlainHF


def _proxy_lm(LM: type, torch: Any) -> type:
    class ProxyLM(LM):  # type: ignore[misc, valid-type]
        """An attnbench proxy model over integer-token text (see the module docstring)."""

        def __init__(self, path: str, device: str | None = None, batch_size: int | str | None = 1,
                     max_length: int | None = None, **_: Any) -> None:
            super().__init__()
            dev = device or "cpu"
            if dev.startswith("cuda") and not torch.cuda.is_available():
                dev = "cpu"
            self.model = load_proxy(path, dev)
            self._device = torch.device(dev)
            cfg = self.model.cfg
            self.vocab = cfg.vocab
            self.max_length = int(max_length) if max_length else (cfg.max_len if cfg.pos == "learned" else None)
            self.batch_size = int(batch_size) if str(batch_size).isdigit() else 1

        @property
        def device(self) -> Any:
            return self._device

        def _logprobs(self, ids: list[list[int]]) -> list[Any]:
            """Log-softmax `[N, V]` of each sequence (same-length sequences batched)."""
            out: list[Any] = [None] * len(ids)
            by_len: dict[int, list[int]] = {}
            for i, s in enumerate(ids):
                by_len.setdefault(len(s), []).append(i)
            with torch.no_grad():
                for idx in by_len.values():
                    for s in range(0, len(idx), self.batch_size):
                        part = idx[s:s + self.batch_size]
                        lp = torch.log_softmax(self.model(torch.tensor([ids[i] for i in part], device=self.device))
                                               .float(), -1)
                        for i, row in zip(part, lp, strict=True):
                            out[i] = row
            return out

        def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
            """(log p(target | context), target is the greedy continuation); context left-truncated."""
            inputs, spans = [], []
            for ctx, tgt in pairs:
                if not ctx:  # no BOS: the first token conditions the rest
                    ctx, tgt = tgt[:1], tgt[1:]
                seq = (ctx + tgt)[:-1] if tgt else ctx
                inputs.append(seq[-self.max_length:] if self.max_length else seq)
                spans.append(tgt)
            res = []
            for lp, tgt in zip(self._logprobs(inputs), spans, strict=True):
                if not tgt:
                    res.append((0.0, True))
                    continue
                rows, t = lp[-len(tgt):], torch.tensor(tgt, device=lp.device)
                res.append((float(rows.gather(1, t[:, None]).sum()), bool((rows.argmax(-1) == t).all())))
            return res

        def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
            return self._score([(encode(r.args[0], self.vocab), encode(r.args[1], self.vocab)) for r in requests])

        def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
            out = []
            for r in requests:
                ids = encode(r.args[0], self.vocab)
                step = max((self.max_length or len(ids)) - 1, 1)
                pairs = [(ids[a - 1:a], ids[a:a + step]) for a in range(1, len(ids), step)]
                out.append(sum(ll for ll, _ in self._score(pairs)))
            return out

        def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
            out = []
            for r in requests:
                ctx, kw, until = generation_request(r)
                ids, new, text = encode(ctx, self.vocab), [], ""
                for _ in range(int(kw.get("max_gen_toks", 16))):
                    seq = ids[-self.max_length:] if self.max_length else ids
                    new.append(int(self._logprobs([seq])[0][-1].argmax()))
                    ids.append(new[-1])
                    text = " ".join(map(str, new))
                    if any(u and u in text for u in until):
                        break
                out.append(text[:min((text.index(u) for u in until if u and u in text), default=len(text))].strip())
            return out

    return ProxyLM


def main() -> None:
    """`python -m attnbench.lmeval …`: lm-eval's CLI with the attnbench model types registered."""
    from lm_eval.__main__ import cli_evaluate

    from attnbench import lmeval

    lmeval.register()
    cli_evaluate()


if __name__ == "__main__":
    main()
