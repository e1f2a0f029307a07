"""Every shipped schema, answered by the real embedded model through the engine: greedy, all in
one batch, each output parses and validates against its schema and ends on its own."""

from __future__ import annotations

import json

import jsonschema
import pytest

from tests.engine.engine_fixtures import assert_no_leaks
from tokenfactory.bench.structured_output_bench import answer_schema_set, load_schema_set
from tokenfactory.engine.constraints.spec import GrammarSpec
from tokenfactory.engine.sampling_params import SamplingParams

pytestmark = pytest.mark.slow

CASES = load_schema_set()


def test_the_shipped_set_is_large_and_every_schema_compiles():
    from tokenfactory.engine.constraints.compile import grammar_error

    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)
    for case in CASES:
        jsonschema.Draft202012Validator.check_schema(case.schema)
        assert grammar_error(GrammarSpec.json_schema(case.schema)) is None, case.name


def test_every_schema_gets_a_valid_answer(make_engine):
    engine = make_engine()
    outs = answer_schema_set(engine, CASES)
    failures = []
    for case, out in zip(CASES, outs, strict=True):
        try:
            jsonschema.validate(json.loads(out.text), case.schema)
        except (ValueError, jsonschema.ValidationError) as exc:
            failures.append(f"{case.name}: {out.finish_reason}, {out.text!r}: {exc}")
            continue
        if out.finish_reason != "stop":
            failures.append(f"{case.name}: finished by {out.finish_reason}")
    assert not failures, "\n".join(failures)
    assert_no_leaks(engine)


def test_prompt_lookup_drafts_under_a_grammar_change_no_token(make_engine):
    from tokenfactory.engine.engine import Engine
    from tokenfactory.engine.speculation.ngram import NgramProposer

    plain = make_engine()
    spec = Engine(plain.model, plain.tokenizer, plain.config, proposer=NgramProposer())
    spec.scheduler.max_draft_tokens = 4
    picked = [c for c in CASES if c.name in ("person", "log_entry", "address", "contact")]
    for case in picked:
        text = plain.chat_prompt([{"role": "user", "content": f"{case.prompt} Answer in JSON."}])
        params = SamplingParams(
            temperature=0.0, max_tokens=160, grammar=GrammarSpec.json_schema(case.schema)
        )
        a = plain.generate(text, params)[0]
        b = spec.generate(text, params)[0]
        assert b.token_ids == a.token_ids, case.name
        jsonschema.validate(json.loads(b.text), case.schema)
    steps = spec.stats.recent()
    assert sum(s.num_accepted_tokens for s in steps) > 0
    assert_no_leaks(spec)
