"""attnbench's synthetic tasks as lm-eval task folders: task YAML + local JSONL, nothing from a hub.

Every document comes from attnbench's own generators (`attnbench.proxy.data`), so a folder is fully
determined by its arguments. Two forms:

Text (any Hugging Face causal LM; `multiple_choice`: the log-likelihood of the right answer against
distractors, metrics `acc`/`acc_norm`; chosen over generated exact match because it is cheap,
deterministic and independent of how a tokenizer splits digits or when a model stops):
    attnbench_niah   passkey (Mohtashami & Jaggi / RULER haystack): a task sentence, the RULER noise
                     sentences repeated (`haystack="periodic"`) with "The pass key is K. Remember it. K is
                     the pass key." at depth δ, then "What is the pass key? The pass key is"; choices: K and
                     `choices - 1` other keys of the same digit count. One cell per length (haystack
                     words) × depth, cells interleaved so any `limit` samples every cell.
    attnbench_mqar   MQAR as words: "key value pairs : k₁ v₁ … k_K v_K . query k answer v … query k
                     answer" → v (keys are letter words, values numbers); one document per query,
                     earlier queries answered in the context (teacher forcing, as the proxy scores);
                     choices: the K values of the sequence.
Tokens (attnbench's trained proxy models through the `attnbench-proxy` lm-eval model; whitespace-separated
integer token ids, exactly the proxy suites' vocabularies and defaults):
    attnbench_niah_tokens   `proxydata.niah` (3 digits, 64 noise fillers) up to and including QUERY →
                            the k digits, `generate_until` + `exact_match` (all k digits, as the niah suite)
    attnbench_mqar_tokens   `proxydata.mqar` (V=256, L=64, K=8) up to a query key → its value,
                            `loglikelihood` + `acc` (greedy, as the mqar suite's per-query accuracy)
Groups: `attnbench` (the text tasks, mean acc weighted by size) and `attnbench_tokens`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from attnbench.proxy import data as proxydata

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.".split()
INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the important information there.")
QUESTION = "What is the pass key? The pass key is"
TEXT_TASKS = ("attnbench_niah", "attnbench_mqar")
TOKEN_TASKS = ("attnbench_niah_tokens", "attnbench_mqar_tokens")
GROUPS = {"attnbench": TEXT_TASKS, "attnbench_tokens": TOKEN_TASKS}
VERSION = 1


def needle(key: str) -> str:
    return f"The pass key is {key}. Remember it. {key} is the pass key."


def key_word(i: int) -> str:
    """Key id ≥ 1 as a lowercase letter word: 1 → a, 26 → z, 27 → aa (bijective base 26)."""
    out = ""
    while i > 0:
        i, r = divmod(i - 1, 26)
        out = chr(97 + r) + out
    return out


def _interleave(cells: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Sample 0 of every cell, then sample 1, …: a `limit` of n documents covers min(n, cells) cells."""
    return [c[i] for i in range(max(map(len, cells), default=0)) for c in cells if i < len(c)]


def _other_keys(rng: np.random.Generator, key: str, n: int) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        k = "".join(str(d) for d in rng.integers(0, 10, size=len(key)))
        if k != key and k not in out:
            out.append(k)
    return out


def niah_text_docs(seed: int, lens: Sequence[int], depths: Sequence[float], samples: int, digits: int,
                   choices: int) -> list[dict[str, Any]]:
    """Passkey documents; `needle_at` = filler words before the needle = round(δ·(L − 2k − 2))."""
    cells = []
    for i, length in enumerate(lens):
        for j, depth in enumerate(depths):
            rng = np.random.default_rng([seed, 1, i, j, length])
            x, _ = proxydata.niah(rng, samples, length, depth, digits, len(FILLER), "periodic")
            docs = []
            for row in x:
                start = int(np.flatnonzero(row == proxydata.NEEDLE)[0])
                key = "".join(str(d) for d in row[start + 1:start + 1 + digits])
                words = [FILLER[t - proxydata.FIRST_FILLER] for t in row[:start]]
                words.append(needle(key))
                words += [FILLER[t - proxydata.FIRST_FILLER] for t in row[start + 1 + digits:length - digits - 1]]
                options = [key, *_other_keys(rng, key, choices - 1)]
                order = rng.permutation(choices)
                docs.append({"context": f"{INTRO} {' '.join(words)} {QUESTION}", "choices": [options[o] for o in order],
                             "label": int(np.flatnonzero(order == 0)[0]), "key": key, "length": int(length),
                             "depth": float(depth), "needle_at": start})
            cells.append(docs)
    return _interleave(cells)


def mqar_text_docs(seed: int, samples: int, vocab: int, seq_len: int, kv_pairs: int) -> list[dict[str, Any]]:
    """MQAR documents, one per query (in order of appearance), earlier queries answered in context."""
    rng = np.random.default_rng([seed, 2])
    x, y = proxydata.mqar(rng, samples, vocab, seq_len, kv_pairs, random_non_queries=False)
    half = vocab // 2
    per_query: list[list[dict[str, Any]]] = [[] for _ in range(kv_pairs)]
    for row, lab in zip(x, y, strict=True):
        pairs = [(key_word(int(k)), str(int(v) - half)) for k, v in zip(row[:2 * kv_pairs:2], row[1:2 * kv_pairs:2],
                                                                          strict=True)]
        values = [v for _, v in pairs]
        text = "key value pairs : " + " ".join(f"{k} {v}" for k, v in pairs) + " ."
        for q, pos in enumerate(np.flatnonzero(lab != proxydata.IGNORE)):
            key, value = key_word(int(row[pos])), str(int(lab[pos]) - half)
            first = int(np.flatnonzero(row[:2 * kv_pairs] == row[pos])[0])
            per_query[q].append({"context": f"{text} query {key} answer", "choices": values,
                                 "label": values.index(value), "key": key, "answer": value, "query_index": q,
                                 "distance": int(pos - first)})
            text += f" query {key} answer {value}"
    return [d for docs in per_query for d in docs]


def _tokens(ids: Iterable[int]) -> str:
    return " ".join(str(int(t)) for t in ids)


def niah_token_docs(seed: int, lens: Sequence[int], depths: Sequence[float], samples: int, digits: int = 3,
                    n_filler: int = 64) -> list[dict[str, Any]]:
    cells = []
    for i, length in enumerate(lens):
        for j, depth in enumerate(depths):
            rng = np.random.default_rng([seed, 3, i, j, length])
            x, _ = proxydata.niah(rng, samples, length, depth, digits, n_filler, "noise")
            cells.append([{"context": _tokens(row[:length - digits]), "target": _tokens(row[length - digits:]),
                           "length": int(length), "depth": float(depth)} for row in x])
    return _interleave(cells)


def mqar_token_docs(seed: int, samples: int, vocab: int = 256, seq_len: int = 64,
                    kv_pairs: int = 8) -> list[dict[str, Any]]:
    rng = np.random.default_rng([seed, 4])
    x, y = proxydata.mqar(rng, samples, vocab, seq_len, kv_pairs)
    per_query: list[list[dict[str, Any]]] = [[] for _ in range(kv_pairs)]
    for row, lab in zip(x, y, strict=True):
        for q, pos in enumerate(np.flatnonzero(lab != proxydata.IGNORE)):
            per_query[q].append({"context": _tokens(row[:pos + 1]), "target": str(int(lab[pos])), "query_index": q})
    return [d for docs in per_query for d in docs]


def _yaml(fields: dict[str, Any]) -> str:
    """YAML whose values are JSON (a subset of YAML): no YAML library needed to write it."""
    return "".join(f"{k}: {json.dumps(v)}\n" for k, v in fields.items())


def _task(name: str, data: Path, kind: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test", "output_type": kind, "doc_to_text": "{{context}}", **extra,
            "metadata": {"version": VERSION}}


MC = {"doc_to_target": "label", "doc_to_choice": "choices", "target_delimiter": " ",
      "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                      {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]}


def export_tasks(out_dir: str | Path, *, seed: int = 0, niah_lens: Sequence[int] = (64, 128, 256),
                 niah_depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), niah_samples: int = 4,
                 digits: int = 5, choices: int = 4, mqar_vocab: int = 128, mqar_len: int = 64, mqar_kv: int = 8,
                 mqar_samples: int = 16, tokens: bool = True) -> list[str]:
    """Write lm-eval task YAML + JSONL (absolute `data_files` paths) under `out_dir`.

    Args:
        niah_lens: haystack lengths in generator positions (≈ filler words); `niah_samples` per length × depth.
        digits, choices: passkey digits and answer choices (the key and `choices - 1` distractors).
        mqar_*: the text MQAR generator (V, L, K pairs, sequences; every sequence gives K documents).
        tokens: also write the integer-token tasks for `attnbench-proxy` models (proxy-suite defaults).
    Returns:
        the task names written, then the group names (pass them to lm-eval's `--tasks`).
    """
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    docs = {"attnbench_niah": niah_text_docs(seed, niah_lens, niah_depths, niah_samples, digits, choices),
            "attnbench_mqar": mqar_text_docs(seed, mqar_samples, mqar_vocab, mqar_len, mqar_kv)}
    kinds = {"attnbench_niah": ("multiple_choice", MC), "attnbench_mqar": ("multiple_choice", MC)}
    if tokens:
        docs["attnbench_niah_tokens"] = niah_token_docs(seed, niah_lens, niah_depths, niah_samples)
        docs["attnbench_mqar_tokens"] = mqar_token_docs(seed, mqar_samples)
        kinds["attnbench_niah_tokens"] = ("generate_until", {
            "doc_to_target": "target", "generation_kwargs": {"until": ["\n"], "max_gen_toks": 3, "do_sample": False},
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}]})
        kinds["attnbench_mqar_tokens"] = ("loglikelihood", {
            "doc_to_target": "target", "target_delimiter": " ",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]})
    for name, rows in docs.items():
        data = out / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        kind, extra = kinds[name]
        (out / f"{name}.yaml").write_text(_yaml(_task(name, data, kind, extra)))
    groups = []
    for group, members in GROUPS.items():
        if not all(m in docs for m in members):
            continue
        fields: dict[str, Any] = {"group": group, "task": list(members)}
        if group == "attnbench":
            fields["aggregate_metric_list"] = [{"metric": "acc", "aggregation": "mean", "weight_by_size": True}]
        fields["metadata"] = {"version": VERSION}
        (out / f"{group}_group.yaml").write_text(_yaml(fields))
        groups.append(group)
    return [*docs, *groups]
