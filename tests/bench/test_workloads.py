"""Workloads: length distributions, agent sessions, the trace's shared-prefix property."""

from __future__ import annotations

import itertools
import json
import random
import statistics

import pytest

from tokenfactory.bench.serve.arrivals import arrival_gaps, parse_rates
from tokenfactory.bench.serve.lengths import LengthDist
from tokenfactory.bench.serve.text import WORDS_PER_TOKEN, TextGen, count_tokens_approx
from tokenfactory.bench.serve.trace import BLOCK_TOKENS, BlockText, make_trace, read_trace
from tokenfactory.bench.serve.workloads import Clamp, WorkloadOptions, build_sessions


def first_specs(opts: WorkloadOptions, n: int, clamp: Clamp | None = None):
    sessions = build_sessions(opts, clamp or Clamp(opts.max_context))
    return [next(s.steps)[1] for s in itertools.islice(sessions, n)]


def test_length_specs_parse_and_sample():
    rng = random.Random(0)
    assert LengthDist.parse("128").sample(rng) == 128
    uni = [LengthDist.parse("10..20").sample(rng) for _ in range(500)]
    assert min(uni) == 10 and max(uni) == 20
    logn = [LengthDist.parse("lognormal:160,0.9").sample(rng) for _ in range(20000)]
    assert statistics.mean(logn) == pytest.approx(160, rel=0.05)
    assert statistics.median(logn) < 160  # right-skewed like real chat lengths
    for bad in ("x", "20..10", "lognormal:a,b", "-3"):
        with pytest.raises(ValueError):
            LengthDist.parse(bad)


def test_random_workload_has_the_lengths_asked_for():
    specs = first_specs(WorkloadOptions("random", input_len="200", output_len="50..60"), 200)
    assert {s.input_tokens for s in specs} == {200}
    assert {s.max_tokens for s in specs} <= set(range(50, 61))
    words = [len(s.messages[0]["content"].split()) for s in specs]
    assert statistics.mean(words) == pytest.approx(200 * WORDS_PER_TOKEN, rel=0.02)
    assert len({s.messages[0]["content"] for s in specs}) == 200  # no accidental sharing


def test_chat_workload_is_sharegpt_like():
    specs = first_specs(WorkloadOptions("chat"), 3000)
    assert statistics.mean(s.input_tokens for s in specs) == pytest.approx(160, rel=0.1)
    assert statistics.mean(s.max_tokens for s in specs) == pytest.approx(340, rel=0.1)
    text = specs[0].messages[0]["content"]
    assert text[0].isupper() and "." in text


def test_text_is_sized_in_tokens():
    gen = TextGen(3)
    assert count_tokens_approx(gen.text(300)) == pytest.approx(300, abs=2)
    exact = TextGen(3, encode=lambda t: t.split())  # a one-word-per-token tokenizer
    assert len(exact.text(77).split()) == 77


def test_max_context_clamps_and_counts():
    clamp = Clamp(512)
    specs = first_specs(
        WorkloadOptions("random", input_len="600", output_len="100", max_context=512), 5, clamp
    )
    assert all(s.input_tokens + s.max_tokens <= 512 for s in specs)
    assert clamp.clamped == 5


def test_tier_mix_shares():
    opts = WorkloadOptions("random", tier_mix={"free": 0.5, "super": 0.5}, seed=1)
    tiers = [s.tier for s in first_specs(opts, 1000)]
    assert tiers.count("free") == pytest.approx(500, abs=60)
    assert set(tiers) == {"free", "super"}


def run_agent_session(opts: WorkloadOptions, reply: str = "Calling a tool now."):
    session = next(build_sessions(opts, Clamp(opts.max_context)))
    out = []
    try:
        step = next(session.steps)
        while True:
            out.append(step)
            step = session.steps.send(reply)
    except StopIteration:
        pass
    return session, out


def test_agent_sessions_share_a_prefix_and_grow():
    opts = WorkloadOptions("agent", agent_system_tokens=500, agent_turns=2, agent_steps=3)
    session, steps = run_agent_session(opts)
    specs = [spec for _, spec in steps]
    assert len(specs) == 6
    system = specs[0].messages[0]
    assert system["role"] == "system" and '"name": "read_file"' in system["content"]
    assert count_tokens_approx(system["content"]) == pytest.approx(500, rel=0.25)
    assert all(s.messages[0] == system for s in specs)
    sizes = [s.input_tokens for s in specs]
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0] + 300
    for a, b in itertools.pairwise(specs):  # each request extends the previous one
        assert b.messages[: len(a.messages)] == a.messages
    assert {s.cache_key for s in specs} == {session.id}
    assert all(s.max_tokens <= 64 for s in specs)
    delays = [d for d, _ in steps]
    assert delays[0] == 0 and all(d > 0 for d in delays[1:])
    other = next(itertools.islice(build_sessions(opts, Clamp()), 1, None))
    assert next(other.steps)[1].messages[0] == system  # shared across sessions


def test_agent_session_ends_on_error_and_at_max_context():
    opts = WorkloadOptions("agent", agent_turns=3, agent_steps=3)
    session = next(build_sessions(opts, Clamp()))
    next(session.steps)
    with pytest.raises(StopIteration):
        session.steps.send(None)
    clamp = Clamp(900)
    opts = WorkloadOptions("agent", agent_system_tokens=600, max_context=900)
    session = next(build_sessions(opts, clamp))
    specs = []
    try:
        step = next(session.steps)
        while True:
            specs.append(step[1])
            step = session.steps.send("ok")
    except StopIteration:
        pass
    assert all(spec.input_tokens + spec.max_tokens <= 900 for spec in specs)
    assert 1 <= len(specs) < 6
    assert clamp.clamped == 1  # the session ended where it would overflow


def test_trace_equal_hash_ids_share_identical_text():
    blocks = BlockText(seed=0)
    a = blocks.prompt([1, 2, 3], 3 * BLOCK_TOKENS)
    b = blocks.prompt([1, 2, 9], 2 * BLOCK_TOKENS + 100)
    c = blocks.prompt([7, 2, 3], 3 * BLOCK_TOKENS)
    shared = " ".join([blocks.block(1), blocks.block(2)])
    assert a.startswith(shared) and b.startswith(shared)
    assert not c.startswith(blocks.block(1)[:50])
    assert a[len(shared) :] != b[len(shared) :]
    assert count_tokens_approx(b) == pytest.approx(2 * BLOCK_TOKENS + 100, rel=0.02)


def test_sample_trace_is_the_script_output_and_replays(tmp_path):
    shipped = read_trace("sample")
    made = make_trace()
    assert [r["hash_ids"] for r in shipped] == [r["hash_ids"] for r in made]
    assert all(r["input_length"] + r["output_length"] <= 2048 for r in shipped)
    firsts = [r["hash_ids"][0] for r in shipped]
    assert len(set(firsts)) < len(firsts)  # families share leading blocks
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in made[:5]))
    sessions = list(
        build_sessions(WorkloadOptions("trace", trace=str(path), trace_speed=2), Clamp())
    )
    assert len(sessions) == 5
    assert sessions[0].timestamp_s == 0
    assert sessions[1].timestamp_s == pytest.approx(
        (made[1]["timestamp"] - made[0]["timestamp"]) / 2000
    )


def test_arrival_processes():
    def gaps(rate, k, n=20000):
        return list(itertools.islice(arrival_gaps(rate, k, seed=1), n))

    for rate, k in ((4.0, 1.0), (4.0, 0.25), (4.0, 4.0)):
        g = gaps(rate, k)
        assert statistics.mean(g) == pytest.approx(1 / rate, rel=0.05)
        cv = statistics.pstdev(g) / statistics.mean(g)
        assert cv == pytest.approx(1 / k**0.5, rel=0.08)
    assert set(gaps(float("inf"), 1.0, 10)) == {0.0}
    assert parse_rates("1, 2,inf") == [1.0, 2.0, float("inf")]
