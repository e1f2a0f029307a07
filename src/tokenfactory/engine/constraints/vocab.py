"""The grammar engine's view of a model's vocabulary, built from tokenfactory's tokenizer.

llguidance reads the `tokenizers` JSON our GGUF/HF tokenizer already is, and learns each
token's bytes from it. Building that costs ~0.3 s on a 49k vocabulary, so it is made once per
tokenizer (per model) and shared by every request and engine that use it.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING

import llguidance

if TYPE_CHECKING:
    from tokenfactory.models.tokenizer import Tokenizer

_cache: weakref.WeakKeyDictionary[Tokenizer, dict[int, llguidance.LLTokenizer]] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def grammar_tokenizer(tokenizer: Tokenizer, vocab_size: int) -> llguidance.LLTokenizer:
    """llguidance's tokenizer for `tokenizer`, with masks `vocab_size` wide (the model's logits
    may be wider than the tokenizer's vocabulary: padding ids are never allowed)."""
    with _lock:
        per_size = _cache.setdefault(tokenizer, {})
        cached = per_size.get(vocab_size)
        if cached is None:
            cached = llguidance.LLTokenizer(
                tokenizer.backend.to_str(),
                n_vocab=vocab_size,
                eos_token=list(tokenizer.eos_token_ids) or None,
            )
            per_size[vocab_size] = cached
        return cached
