"""tokenizer.ggml.pre picks the split regexes; a value we do not know is refused by name."""

from __future__ import annotations

import pytest

from tokenfactory.models.errors import UnsupportedArchitectureError
from tokenfactory.models.gguf_tokenizer import gguf_backend

_BYTES = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["Ġ"]


def _meta(pre: str | None) -> dict:
    meta: dict = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": ["<s>", "</s>", *_BYTES, "12", "1", "2"],
        "tokenizer.ggml.merges": ["1 2"],
        "tokenizer.ggml.eos_token_id": 1,
    }
    if pre is not None:
        meta["tokenizer.ggml.pre"] = pre
    return meta


def test_unknown_pre_tokenizer_is_refused_by_name() -> None:
    with pytest.raises(UnsupportedArchitectureError, match="'tekken'") as info:
        gguf_backend(_meta("tekken"))
    assert "smollm" in str(info.value)  # the message lists what is supported


def test_missing_pre_tokenizer_means_gpt2() -> None:
    backend = gguf_backend(_meta(None))
    assert backend.encode("12", add_special_tokens=False).tokens == ["12"]


def test_smollm_pre_tokenizer_splits_digits() -> None:
    backend = gguf_backend(_meta("smollm"))
    assert backend.encode("12", add_special_tokens=False).tokens == ["1", "2"]
