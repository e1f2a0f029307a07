"""Constrained decoding's parts, with no model: a byte-level tokenizer, the grammar matcher,
the masks it fills, and their application to logits in the sampler."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as Backend

from tokenfactory.engine.constraints.cache import GrammarCache
from tokenfactory.engine.constraints.masks import MaskBuilder
from tokenfactory.engine.constraints.matcher import GrammarMatcher
from tokenfactory.engine.constraints.spec import GrammarSpec
from tokenfactory.engine.constraints.vocab import grammar_tokenizer
from tokenfactory.engine.errors import InvalidRequestError
from tokenfactory.engine.sampling.grammar_mask import GrammarMasks, apply_grammar_masks
from tokenfactory.engine.sampling.sampler import Sampler
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.models.tokenizer import Tokenizer

EOS = 0
VOCAB = 512  # wider than the tokenizer's 257 tokens, as a model's padded logits can be


def byte_tokenizer() -> Tokenizer:
    """Token 0 is EOS, token 1 + b is byte b: every text has exactly one spelling."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_chars = sorted(alphabet, key=_byte_of)
    vocab = {"<|eos|>": EOS} | {c: 1 + i for i, c in enumerate(byte_chars)}
    backend = Backend(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken("<|eos|>", special=True, normalized=False)])
    return Tokenizer(backend, eos_token_ids=[EOS])


def _byte_of(char: str) -> int:
    """GPT-2's byte alphabet: printable bytes map to themselves, the rest to 256 + k."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    if ord(char) in printable:
        return ord(char)
    others = [b for b in range(256) if b not in printable]
    return others[ord(char) - 256]


TOKENIZER = byte_tokenizer()


def ids(text: str) -> list[int]:
    return [1 + b for b in text.encode()]


def matcher(spec: GrammarSpec) -> GrammarMatcher:
    return GrammarMatcher.compile(spec, grammar_tokenizer(TOKENIZER, VOCAB))


def allowed(bits: torch.Tensor) -> set[int]:
    return {t for t in range(VOCAB) if (int(bits[t // 32]) >> (t % 32)) & 1}


def test_the_byte_tokenizer_round_trips():
    assert TOKENIZER.encode('{"a": 1}') == ids('{"a": 1}')
    assert TOKENIZER.decode(ids("héllo")) == "héllo"


def test_grammar_tokenizer_is_cached_per_tokenizer_and_width():
    assert grammar_tokenizer(TOKENIZER, VOCAB) is grammar_tokenizer(TOKENIZER, VOCAB)
    assert grammar_tokenizer(TOKENIZER, VOCAB) is not grammar_tokenizer(TOKENIZER, 320)
    assert grammar_tokenizer(TOKENIZER, VOCAB).vocab_size == VOCAB


SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["ok", "n"],
    "additionalProperties": False,
}


def test_matcher_advances_token_by_token_and_finishes():
    m = matcher(GrammarSpec.json_schema(SCHEMA))
    text = '{"ok": true, "n": 7}'
    for i, token in enumerate(ids(text)):
        assert not m.is_finished, f"finished early at {text[:i]!r}"
        assert m.accept(token)
    assert m.is_accepting and m.is_finished
    assert m.error is None


def test_matcher_refuses_a_token_outside_the_grammar():
    m = matcher(GrammarSpec.json_schema(SCHEMA))
    assert m.accept_all(ids('{"ok": '))
    assert not m.accept(ids("7")[0])  # "ok" is a boolean
    assert m.error and m.is_finished  # an error state ends the request


def test_matcher_rolls_back():
    m = matcher(GrammarSpec.json_schema(SCHEMA))
    assert m.accept_all(ids('{"ok": true'))
    m.rollback(4)
    assert m.accept_all(ids('false, "n": 1}')) and m.is_finished


def test_grammar_cache_compiles_once_and_hands_out_independent_copies():
    cache = GrammarCache(grammar_tokenizer(TOKENIZER, VOCAB), max_entries=2)
    spec = GrammarSpec.json_schema(SCHEMA)
    a, b = cache.matcher(spec), cache.matcher(GrammarSpec.json_schema(SCHEMA))
    assert len(cache) == 1 and a is not b
    assert a.accept_all(ids('{"ok": true, "n": 1}')) and a.is_finished
    assert not b.is_finished and b.accept_all(ids('{"ok": false'))  # b is still at the start
    with pytest.raises(InvalidRequestError):
        cache.matcher(GrammarSpec.json_schema({"not": {}}))
    assert len(cache) == 1  # refusals are not cached
    cache.matcher(GrammarSpec.json_object())
    cache.matcher(GrammarSpec.lark('start: "x"'))
    assert len(cache) == 2  # least recently used evicted


def test_bad_grammar_is_an_invalid_request_naming_grammar():
    with pytest.raises(InvalidRequestError) as info:
        matcher(GrammarSpec.json_schema({"not": {}}))
    assert info.value.param == "grammar" and "not" in str(info.value)


@pytest.mark.parametrize("overlap", [True, False])
def test_mask_builder_fills_each_rows_mask(overlap):
    builder = MaskBuilder(VOCAB, overlap=overlap)
    a = matcher(GrammarSpec.json_schema(SCHEMA))
    b = matcher(GrammarSpec.json_schema(SCHEMA))
    assert b.accept_all(ids('{"ok": true, "n": '))
    masks = builder.start([(1, a, []), (4, b, [])]).result()
    assert masks.rows == [1, 4]
    assert allowed(masks.bits[0]) == set(ids("{"))
    assert allowed(masks.bits[1]) == set(ids("0123456789"))  # 0 to 9: one digit
    assert b.accept_all(ids("3}"))
    done = builder.start([(0, b, [])]).result()
    assert allowed(done.bits[0]) == {EOS}  # a complete grammar allows only EOS
    builder.close()


def test_a_draft_gets_a_mask_per_position_and_the_matcher_is_left_as_it_was():
    builder = MaskBuilder(VOCAB, overlap=False)
    m = matcher(GrammarSpec.json_schema(SCHEMA))
    assert m.accept_all(ids('{"ok": '))
    other = matcher(GrammarSpec.json_schema(SCHEMA))
    draft = ids("tr") + ids("7") + ids("ue")  # "7" cannot follow "tr"
    masks = builder.start([(0, other, []), (1, m, draft)]).result()
    assert masks.rows == [0, 1, 2, 3, 4, 5, 6]
    assert allowed(masks.bits[0]) == set(ids("{"))
    assert allowed(masks.bits[1]) == set(ids("tf"))  # true / false
    assert allowed(masks.bits[2]) == set(ids("r"))  # after "t"
    assert allowed(masks.bits[3]) == set(ids("u"))  # after "tr": the draft's "7" is refused
    for row in (4, 5, 6):  # past the refused token: never used, left unconstrained
        assert len(allowed(masks.bits[row])) == VOCAB
    assert m.accept_all(ids("false, "))  # rolled back to where it stood
    assert not m.error


def _mask_of(tokens: set[int], vocab: int = VOCAB) -> torch.Tensor:
    bits = torch.zeros((vocab + 31) // 32, dtype=torch.int64)
    for t in tokens:
        bits[t // 32] |= 1 << (t % 32)
    return torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32)


def test_masks_apply_to_the_listed_rows_only():
    logits = torch.randn(4, VOCAB)
    before = logits.clone()
    keep = [{3, 40, 511}, {0, 31, 32, 33}]
    masks = GrammarMasks(rows=[0, 2], bits=torch.stack([_mask_of(k) for k in keep]))
    apply_grammar_masks(logits, masks)
    for row, tokens in zip([0, 2], keep, strict=True):
        finite = set(torch.isfinite(logits[row]).nonzero().flatten().tolist())
        assert finite == tokens
        assert torch.equal(logits[row, sorted(tokens)], before[row, sorted(tokens)])
    assert torch.equal(logits[[1, 3]], before[[1, 3]])


def test_masks_cover_a_vocabulary_that_is_not_a_multiple_of_32():
    logits = torch.zeros(1, 100)
    apply_grammar_masks(logits, GrammarMasks([0], _mask_of({99}, 100).unsqueeze(0)))
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == [99]
    with pytest.raises(ValueError):
        apply_grammar_masks(torch.zeros(1, 200), GrammarMasks([0], _mask_of({1}, 100)[None]))


class _Row:
    def __init__(self, params: SamplingParams):
        self.params = params
        self.prompt_token_ids = [1, 2]
        self.output_token_ids: list[int] = []

    @property
    def num_output_tokens(self) -> int:
        return 0


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.0, logprobs=2),
        SamplingParams(temperature=1.0, seed=3, logprobs=2),
        SamplingParams(temperature=0.7, top_p=0.9, top_k=20, seed=5, logprobs=2),
        SamplingParams(temperature=1.0, presence_penalty=1.0, seed=5, logprobs=2),
    ],
)
def test_sampler_picks_only_allowed_tokens_and_leaves_other_rows_alone(params):
    torch.manual_seed(0)
    logits = torch.randn(3, VOCAB) * 5
    keep = {7, 300, 301}
    rows = [_Row(params), _Row(params), _Row(SamplingParams(temperature=0.0))]
    masks = GrammarMasks(rows=[1], bits=_mask_of(keep)[None])
    free = Sampler(seed=0)(logits.clone(), rows)
    out = Sampler(seed=0)(logits.clone(), rows, masks)
    assert out.token_ids[1] in keep
    assert out.token_ids[0] == free.token_ids[0] and out.token_ids[2] == free.token_ids[2]
    # Logprobs describe the model's distribution over what the grammar allows.
    lp = out.logprobs[1]
    assert lp is not None and {t for t, _ in lp.top} <= keep
    allowed_logits = logits[1, sorted(keep)]
    expect = torch.log_softmax(allowed_logits, dim=0)[sorted(keep).index(out.token_ids[1])]
    assert lp.logprob == pytest.approx(float(expect), abs=1e-4)


def test_json_text_of_a_full_grammar_run_parses():
    m = matcher(GrammarSpec.json_object())
    text = '{"a": [1, 2.5, "x"], "b": {"c": null}}'
    assert m.accept_all(ids(text)) and m.is_finished
    assert json.loads(text)["b"] == {"c": None}


def test_lark_grammar_with_embedded_json_schema():
    spec = GrammarSpec.lark(
        'start: "<tool_call>" %json {"type": "object", "properties": {"x": {"type": "integer"}},'
        ' "required": ["x"], "additionalProperties": false} "</tool_call>"'
    )
    m = matcher(spec)
    assert m.accept_all(ids('<tool_call>{"x": 12}</tool_call>'))
    assert m.is_finished


@pytest.mark.integration  # a second Python process
def test_the_engine_does_not_import_llguidance_torch():
    # llguidance.torch runs torch.compile machinery at import: seconds on every start.
    code = (
        "import sys, tokenfactory.engine.engine, tokenfactory.server.structured_output;"
        "assert 'llguidance.torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
