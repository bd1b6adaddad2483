"""Any causal attnbench method inside a Hugging Face causal LM, and checkpoint conversions (GQA, DHA).

`serve`: `attention_fn`, `register`, `apply`, `load`, `why_not`, `servable` (transformers'
AttentionInterface). `convert`: `to_gqa`, `to_dha` (in-place model transforms). transformers is
imported lazily inside functions, so `import attnbench.hf` works without it.
"""

from __future__ import annotations

from attnbench.hf.convert import attention_modules, similarity_groups, to_dha, to_gqa
from attnbench.hf.serve import apply, attention_fn, load, register, servable, why_not

__all__ = ["apply", "attention_fn", "attention_modules", "load", "register", "servable", "similarity_groups",
           "to_dha", "to_gqa", "why_not"]
