"""GGUF "llama" (SentencePiece BPE) vocabularies: merges rebuilt from scores must reproduce
SentencePiece itself. We train a tiny model with the `sentencepiece` library (a dev
dependency), describe it as GGUF metadata the way convert_hf_to_gguf does, and compare."""

from __future__ import annotations

import io
import random

import pytest

from tokenfactory.models.gguf_tokenizer import BYTE, CONTROL, NORMAL, UNKNOWN, UNUSED
from tokenfactory.models.tokenizer import Tokenizer

spm = pytest.importorskip("sentencepiece")

WORDS = (
    "the quick brown fox jumps over lazy dog and then runs into forest where many trees grow "
    "tall while birds sing songs of morning light people walk along river banks talking about "
    "weather news sports music"
).split()

TEXTS = [
    "the quick brown fox",
    "Hello world",  # capitals are not in the training text: byte fallback / single chars
    "  double  spaces  here",
    "numbers 123 4567 and café naïve",
    "東京 日本 z€ 😀",
    "trees\nand\trivers",
    " leading and trailing ",
    "",
]


@pytest.fixture(scope="module")
def sp_model():
    rng = random.Random(0)
    lines = [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 15))) + rng.choice(".!?, ")
        for _ in range(3000)
    ]
    lines += ["numbers 123 4567 and café naïve", "  double  spaces  here", "東京 日本"] * 20
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=proto,
        model_type="bpe",
        vocab_size=500,
        byte_fallback=True,
        remove_extra_whitespaces=False,  # as Llama's tokenizer.model
        normalization_rule_name="identity",
        split_digits=True,
        character_coverage=0.99,
        allow_whitespace_only_pieces=True,
        minloglevel=2,
    )
    return spm.SentencePieceProcessor(model_proto=proto.getvalue())


@pytest.fixture(scope="module")
def ours(sp_model) -> Tokenizer:
    n = sp_model.vocab_size()
    types = []
    for i in range(n):
        if sp_model.is_unknown(i):
            types.append(UNKNOWN)
        elif sp_model.is_control(i):
            types.append(CONTROL)
        elif sp_model.is_byte(i):
            types.append(BYTE)
        elif sp_model.is_unused(i):
            types.append(UNUSED)
        else:
            types.append(NORMAL)
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [sp_model.id_to_piece(i) for i in range(n)],
        "tokenizer.ggml.scores": [sp_model.get_score(i) for i in range(n)],
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
    }
    return Tokenizer.from_gguf_metadata(meta)


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_sentencepiece(ours: Tokenizer, sp_model, text: str) -> None:
    assert ours.encode(text) == sp_model.encode(text)


@pytest.mark.parametrize("text", TEXTS)
def test_decode_matches_sentencepiece(ours: Tokenizer, sp_model, text: str) -> None:
    ids = sp_model.encode(text)
    assert ours.decode(ids) == sp_model.decode(ids)


def test_bos_added_by_default(ours: Tokenizer) -> None:
    # llama.cpp adds BOS to SentencePiece vocabularies unless the file says otherwise.
    assert ours.encode("the", add_special_tokens=True)[0] == 1
    assert ours.bos_token_id == 1 and ours.eos_token_ids == [2]


def test_streaming_keeps_spaces_and_bytes(ours: Tokenizer) -> None:
    for text in TEXTS:
        ids = ours.encode(text)
        detok = ours.detokenizer()
        out = "".join(detok.add(i) for i in ids) + detok.flush()
        assert out == ours.decode(ids)
        assert "\ufffd" not in out
