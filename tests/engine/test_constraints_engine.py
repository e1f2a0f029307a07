"""Constrained decoding through the engine, on a tiny random model with a byte tokenizer:
outputs follow their grammar whatever the weights say, unconstrained requests beside them are
untouched, and preemption, speculation and aborts keep working."""

from __future__ import annotations

import json

import jsonschema
import pytest

from tokenfactory.engine.constraints.spec import GrammarSpec
from tokenfactory.engine.engine import Engine
from tokenfactory.engine.errors import InvalidRequestError
from tokenfactory.engine.sampling_params import SamplingParams

from .engine_fixtures import assert_no_leaks, prompts, tiny_engine
from .speculation_fixtures import ScriptedProposer, speculate
from .test_constraints import TOKENIZER

SCHEMA = {
    "type": "object",
    "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "ok": {"type": "boolean"},
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
        "tags": {
            "type": "array",
            "items": {"type": "string", "maxLength": 3},
            "maxItems": 2,
        },
    },
    "required": ["color", "ok", "count", "tags"],
    "additionalProperties": False,
}
GRAMMAR = GrammarSpec.json_schema(SCHEMA)


def engine(**overrides) -> Engine:
    e = tiny_engine(**overrides)
    e.tokenizer = TOKENIZER  # bytes as tokens 1..256, EOS 0 (as the tiny model's config)
    return e


def constrained(**kw) -> SamplingParams:
    return SamplingParams(**({"temperature": 0.0, "max_tokens": 200, "grammar": GRAMMAR} | kw))


def _check(text: str) -> None:
    jsonschema.validate(json.loads(text), SCHEMA)


def test_greedy_and_sampled_outputs_follow_the_schema_and_stop():
    e = engine()
    params = [constrained(), constrained(temperature=1.0, seed=3), constrained(temperature=1.3)]
    outs = e.generate(prompts(3, seed=1), params)
    for out in outs:
        _check(out.text)
        assert out.finish_reason == "stop"
    assert_no_leaks(e)


def test_unconstrained_requests_in_the_same_batch_are_unchanged():
    batch = prompts(6, seed=2)
    free = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    alone = [c.token_ids for c in engine().generate(batch[::2], free)]
    mixed = engine().generate(batch, [free, constrained()] * 3)
    assert [c.token_ids for c in mixed[::2]] == alone
    for out in mixed[1::2]:
        _check(out.text)


@pytest.mark.parametrize("overlap", [True, False])
def test_mask_overlap_does_not_change_outputs(overlap):
    batch = prompts(4, seed=4)
    ref = [c.text for c in engine().generate(batch, constrained())]
    e = engine()
    e.grammar_masks.overlap = overlap
    assert [c.text for c in e.generate(batch, constrained())] == ref


def test_preempted_requests_resume_where_their_grammar_stood():
    batch = prompts(8, seed=6, lo=20, hi=50)
    alone = engine()
    ref = [alone.generate([p], constrained())[0].text for p in batch]
    tight = engine(num_kv_blocks=12)
    got = tight.generate(batch, constrained())
    assert tight.stats.total_preemptions > 0, "the KV budget was meant to force preemption"
    assert [c.text for c in got] == ref
    assert_no_leaks(tight)


@pytest.mark.parametrize("overlap", [True, False])
def test_speculative_drafts_under_a_grammar_change_no_token(overlap):
    batch = prompts(4, seed=8)
    free = SamplingParams(temperature=0.0, max_tokens=30)
    params = [free, constrained(), free, constrained()]
    ref = engine().generate(batch, params)
    answers = {tuple(p): r.token_ids for p, r in zip(batch, ref, strict=True)}
    e = speculate(engine(), 4)
    e.grammar_masks.overlap = overlap
    # Every third draft token is wrong: some of those the grammar refuses, some it allows.
    e.proposer = ScriptedProposer(answers, wrong_every=3)
    seqs = {}
    for p, sp in zip(batch, params, strict=True):
        rid = e.add_request(p, sp)
        seqs[rid] = e._requests[rid].seq
    texts: dict[str, str] = {}
    while e.has_unfinished():
        for out in e.step():
            texts[out.request_id] = texts.get(out.request_id, "") + out.text
    order = list(seqs)
    assert [texts[r] for r in order] == [c.text for c in ref]
    for r in order[1::2]:
        seq = seqs[r]
        assert 0 < seq.num_accepted_draft_tokens < seq.num_draft_tokens  # both paths ran
        _check(texts[r])
    assert_no_leaks(e)


def test_a_grammar_the_engine_cannot_serve_is_refused_before_queueing():
    e = engine()
    with pytest.raises(InvalidRequestError) as info:
        e.add_request([1, 2, 3], constrained(grammar=GrammarSpec.json_schema({"not": {}})))
    assert info.value.param == "grammar"
    assert not e.has_unfinished()
    e.tokenizer = None
    with pytest.raises(InvalidRequestError) as info:
        e.add_request([1, 2, 3], constrained())
    assert info.value.param == "grammar"


def test_aborting_a_constrained_request_mid_way_frees_everything():
    e = engine()
    rid = e.add_request(prompts(1, seed=9)[0], constrained())
    keep = e.add_request(prompts(1, seed=10)[0], constrained())
    text = ""
    for _ in range(4):
        text += "".join(o.text for o in e.step() if o.request_id == keep)
    assert e.abort(rid)
    while e.has_unfinished():
        text += "".join(o.text for o in e.step() if o.request_id == keep)
    _check(text)
    assert_no_leaks(e)


def test_a_lark_grammar_with_an_embedded_schema():
    lark = (
        'start: "<tool_call>" %json {"type": "object", "properties": {"n": {"type": "integer",'
        ' "minimum": 0, "maximum": 9}}, "required": ["n"], "additionalProperties": false}'
        ' "</tool_call>"'
    )
    out = engine().generate(prompts(1, seed=11), constrained(grammar=GrammarSpec.lark(lark)))[0]
    assert out.text.startswith("<tool_call>") and out.text.endswith("</tool_call>")
    assert 0 <= json.loads(out.text.removeprefix("<tool_call>").removesuffix("</tool_call>"))["n"]
    assert out.finish_reason == "stop"
