"""Streaming deltas concatenate to decode(ids) and never show half a character."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenfactory.models.detokenizer import REPLACEMENT_CHAR
from tokenfactory.models.tokenizer import Tokenizer

pytestmark = pytest.mark.slow

_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# Characters that byte-level BPE splits over several tokens.
MULTIBYTE = st.sampled_from(
    list("é中文日本語한국😀🎉👍🏽👨‍👩‍👧🇫🇷∑∫≈€ñ") + [" ", "\n", "a", "<|im_end|>"]
)


def stream(tokenizer: Tokenizer, ids: list[int], skip: bool = True) -> list[str]:
    detok = tokenizer.detokenizer(skip_special_tokens=skip)
    deltas = [detok.add(i) for i in ids]
    deltas.append(detok.flush())
    return deltas


@_SETTINGS
@given(text=st.text(max_size=80))
def test_deltas_concatenate_to_decode(tokenizer: Tokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    deltas = stream(tokenizer, ids)
    decoded = tokenizer.decode(ids)
    assert "".join(deltas) == decoded
    # SmolLM2's vocabulary lacks a few bytes (e.g. 0xF1, 0x04): text using them is lossy,
    # and its decode holds a real U+FFFD. Otherwise none may appear.
    if REPLACEMENT_CHAR not in decoded:
        assert not any(REPLACEMENT_CHAR in d for d in deltas)


@_SETTINGS
@given(pieces=st.lists(MULTIBYTE, max_size=40), skip=st.booleans())
def test_multibyte_text_never_emits_replacement(
    tokenizer: Tokenizer, pieces: list[str], skip: bool
) -> None:
    ids = tokenizer.encode("".join(pieces))
    deltas = stream(tokenizer, ids, skip)
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=skip)
    assert not any(REPLACEMENT_CHAR in d for d in deltas)
    assert deltas[-1] == ""  # valid text holds nothing back at the end


@_SETTINGS
@given(ids=st.lists(st.integers(min_value=0, max_value=49151), max_size=60))
def test_random_ids_concatenate_to_decode(tokenizer: Tokenizer, ids: list[int]) -> None:
    # Random ids can form invalid UTF-8; then U+FFFD is legitimately part of the text.
    assert "".join(stream(tokenizer, ids)) == tokenizer.decode(ids)


def test_split_character_is_held_back(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("😀")
    assert len(ids) > 1  # one emoji, several byte tokens
    detok = tokenizer.detokenizer()
    deltas = [detok.add(i) for i in ids]
    assert deltas[:-1] == [""] * (len(ids) - 1)
    assert deltas[-1] == "😀"


def test_prompt_context(tokenizer: Tokenizer) -> None:
    prompt = tokenizer.encode("<|im_start|>assistant\nSure")
    generated = tokenizer.encode(", here it is: 東京!")
    detok = tokenizer.detokenizer(prompt_ids=prompt)
    text = "".join(detok.add(i) for i in generated) + detok.flush()
    assert text == ", here it is: 東京!"


def test_window_stays_small(tokenizer: Tokenizer) -> None:
    """Each step decodes a few tokens, not the whole history."""
    lengths: list[int] = []

    def decode(ids):  # noqa: ANN001, ANN202
        lengths.append(len(ids))
        return tokenizer.decode(ids)

    from tokenfactory.models.detokenizer import IncrementalDetokenizer

    detok = IncrementalDetokenizer(decode)
    ids = tokenizer.encode("word " * 300 + "😀" * 20)
    out = "".join(detok.add(i) for i in ids)
    assert out == tokenizer.decode(ids)
    assert max(lengths) <= 8
