"""A tiny randomly initialised Llama-style model and a locally trained tokenizer, saved to a folder.

Nothing comes from a hub: the tokenizer is a word-level model trained with `tokenizers` on a few lines
(digits and the words the exported tasks use), wrapped in `PreTrainedTokenizerFast`; the model is
`LlamaForCausalLM(LlamaConfig(...))` with grouped kv heads (4 query heads, 2 kv heads).
"""

from __future__ import annotations

from pathlib import Path

TEXT = [
    "the pass key is 1234 . remember it . what is the pass key ? the pass key is 1234",
    "key value pairs : a 1 b 2 c 3 d 4 . query a answer 1 query c answer 3",
    "x = 0.5 , y = 1.0 ; x = -1.5 , y = -3.0 ; the grass is green and the sky is blue",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 . , : ; ? ! - = + yes no answer question",
]
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


def build_tiny_lm(folder: str | Path, *, layers: int = 2, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
                  seed: int = 0) -> Path:
    """Save a tiny Llama model and its tokenizer under `folder` (loadable with `from_pretrained`)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Digits(individual_digits=True)])
    tok.train_from_iterator(TEXT, trainers.WordLevelTrainer(special_tokens=SPECIALS))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=512, bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                      pad_token_id=fast.pad_token_id, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).eval().save_pretrained(folder)
    return folder
