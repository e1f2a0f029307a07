"""The verify-cost sweep on a tiny CPU model (structure, not speed), and the plan it feeds:
E(k), the best depth, tier verdicts and the fits, on synthetic tables."""

from __future__ import annotations

import json

import pytest

from tests.engine.engine_fixtures import TINY
from tokenfactory.bench import spec_verify_cost as svc
from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.engine import Engine
from tokenfactory.engine.model_setup import build_model
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.engine.sequence import Sequence
from tokenfactory.tiers import load_tiers


def _tiny_engine(max_seqs: int = 2, max_len: int = 64) -> Engine:
    cfg = EngineConfig(
        dtype="float32", num_kv_blocks=32, block_size=16, max_num_seqs=max_seqs,
        max_model_len=max_len,
    )  # fmt: skip
    model = build_model(TINY, cfg, state_dict=None)
    model.init_random_weights(seed=1, std=0.3)
    return Engine(model, tokenizer=None, config=cfg, model_name="tiny")


def test_sweep_on_tiny_model_writes_table_fits_and_plan(tmp_path):
    engine = _tiny_engine()
    opts = svc.SweepOptions(batches=(1, 2), depths=(0, 2, 3), context=24, warmup=1, reps=2)
    seen: list[int] = []
    table = svc.measure(engine, opts, on_batch=lambda t: seen.append(len(t.points)))
    assert seen == [3, 6]  # a partial table after each batch
    assert not table.skipped
    step_s = table.step_s()
    assert sorted(step_s) == [1, 2] and all(sorted(v) == [0, 2, 3] for v in step_s.values())
    for p in table.points:
        assert p.rows == p.batch * (1 + p.depth) and p.reps == 2
        assert 0 < p.forward_s <= p.step_s and p.step_s_min <= p.step_s
    # Every block the sweep reserved went back.
    assert engine.block_manager.num_free_blocks == engine.num_kv_blocks

    catalog = load_tiers(preset="cpu")
    report = {
        "device": "cpu",
        "measurement": svc.table_json(table),
        "analysis": svc.analyse(table, svc.parse_acceptance("0.6,0.8"), catalog),
    }
    svc.write_report(report, tmp_path)
    doc = json.loads((tmp_path / svc.JSON_NAME).read_text())
    assert set(doc["measurement"]["step_s"]) == {"1", "2"}
    assert set(doc["measurement"]["step_s"]["2"]) == {"0", "2", "3"}
    fits = doc["analysis"]["fits"]
    assert set(fits) == {"scheduler_features", "with_verify_step", "per_batch"}
    assert fits["scheduler_features"]["points"] == 6
    assert fits["per_batch"]["1"]["depths"] == [2, 3]
    best = doc["analysis"]["best_depth"]
    assert [(c["acceptance"], c["batch"]) for c in best] == [(0.6, 1), (0.6, 2), (0.8, 1), (0.8, 2)]
    assert all(c["depth"] in (0, 2, 3) for c in best)
    verdicts = doc["analysis"]["tier_verdicts"]
    assert len(verdicts) == len(catalog.tiers) * 3  # plain, then each rate
    assert doc["analysis"]["acceptance"]["note"].startswith("inputs")
    plot = doc["plot"]
    assert plot == svc.PNG_NAME or "matplotlib" in plot["skipped"]
    if plot == svc.PNG_NAME:
        assert (tmp_path / svc.PNG_NAME).stat().st_size > 0

    # The saved table is analysed again without measuring: other rates, same table.
    again = tmp_path / "again"
    assert svc.main(["--table", str(tmp_path / svc.JSON_NAME), "--out", str(again),
                     "--acceptance", "0.9", "--no-plot"]) == 0  # fmt: skip
    redo = json.loads((again / svc.JSON_NAME).read_text())
    assert redo["measurement"] == doc["measurement"]
    assert {c["acceptance"] for c in redo["analysis"]["best_depth"]} == {0.9}
    assert redo["analysis"]["tiers"]["preset"] == "cpu"  # from the table's device


def test_a_failing_step_is_recorded_and_the_sweep_goes_on(monkeypatch):
    engine = _tiny_engine()
    real = svc._time_step

    def flaky(engine, seqs, drafts, depth, opts):
        if len(seqs) == 2 and depth == 2:
            raise RuntimeError("no kernel for this shape")
        return real(engine, seqs, drafts, depth, opts)

    monkeypatch.setattr(svc, "_time_step", flaky)
    opts = svc.SweepOptions(batches=(1, 2), depths=(0, 2), context=16, warmup=0, reps=1)
    table = svc.measure(engine, opts)
    assert [(p.batch, p.depth) for p in table.points] == [(1, 0), (1, 2), (2, 0)]
    assert "no kernel" in table.errors["2,2"]
    assert svc.table_from_json(svc.table_json(table)) == table
    assert engine.block_manager.num_free_blocks == engine.num_kv_blocks


def test_timed_verify_step_is_the_engines_verify_path():
    """Row 0 of a verify span is the plain decode's row: greedy, the same token."""
    engine = _tiny_engine(max_seqs=2)
    params = SamplingParams(temperature=0.0)
    seqs = []
    for i, prompt in enumerate([[5, 6, 7, 8] * 6, [9, 10, 11] * 7]):
        seq = Sequence(f"s{i}", prompt, params)
        engine.block_manager.allocate_prefix(seq)
        assert engine.block_manager.append_slots(seq, len(prompt) + 4)
        seqs.append(seq)
    svc._prefill(engine, seqs)
    drafts = [[20, 21, 22], [30, 31, 32]]
    plain, rows = svc._verify_step(seqs, drafts, 0)
    assert plain.num_draft_tokens == 0 and len(rows) == 2
    first = engine.sampler(engine.runner.execute(plain), rows).token_ids
    verify, rows = svc._verify_step(seqs, drafts, 3)
    assert verify.num_draft_tokens == 6 and verify.num_decode_tokens == 2
    logits = engine.runner.execute(verify)
    assert logits.shape[0] == len(rows) == 8
    sampled = engine.sampler(logits, rows).token_ids
    assert [sampled[0], sampled[4]] == first
    for seq in seqs:
        engine.block_manager.free(seq)


def test_expected_tokens_and_best_depth_math():
    flat = {k: 0.010 for k in range(9)}
    c = svc.best_depth(flat, 0.9, batch=4)
    assert c.depth == 8  # flat cost: every draft token is free, the deepest wins
    assert c.expected_tokens == pytest.approx((1 - 0.9**9) / (1 - 0.9))
    assert c.tokens_per_s_per_user == pytest.approx(c.expected_tokens / 0.010)
    assert c.tokens_per_s == pytest.approx(4 * c.expected_tokens / 0.010)
    assert c.plain_tokens_per_s_per_user == pytest.approx(100.0)
    assert svc.best_depth(flat, 1.0, batch=1).expected_tokens == pytest.approx(9.0)
    # Nothing accepted: every depth emits one token; the tie goes to the shallowest.
    assert svc.best_depth(flat, 0.0, batch=1).depth == 0
    # Each draft token costs as much as a whole decode step: speculation never pays.
    steep = {k: 0.010 * (1 + k) for k in range(9)}
    for a in (0.3, 0.8, 0.99):
        assert svc.best_depth(steep, a, batch=1).depth == 0
    # In between, the optimum is interior: 10 ms + 1 ms per token at a = 0.7.
    mid = {k: 0.010 + 0.001 * k for k in range(9)}
    rates = {k: svc.expected_tokens(0.7, k) / s for k, s in mid.items()}
    assert svc.best_depth(mid, 0.7, batch=1).depth == max(rates, key=rates.__getitem__)
    assert 0 < svc.best_depth(mid, 0.7, batch=1).depth < 8
    # Without a measured k = 0 there is no plain baseline to compare with.
    assert svc.best_depth({2: 0.01}, 0.5, batch=1).plain_tokens_per_s_per_user is None


def test_tier_verdicts_read_the_shipped_promises():
    catalog = load_tiers(preset="gpu")
    ultra, super_ = catalog["ultra"].tokens_per_s, catalog["super"].tokens_per_s
    # Plain decoding just under ultra at batch 1; the step grows with the batch; drafts are
    # cheap until the batch is large.
    step_s: dict[int, dict[int, float]] = {}
    for b in (1, 8, 64):
        base = 1.02 / ultra * (1 + b / 64)
        step_s[b] = {k: base * (1 + 0.02 * k * b / 8) for k in range(9)}
    choices = svc.plan_speeds(step_s, [svc.Acceptance(0.9, "test")])
    verdicts = {(v.tier, v.acceptance): v for v in svc.tier_verdicts(choices, catalog)}
    assert verdicts[("ultra", None)].batches == []
    assert 1 in verdicts[("ultra", 0.9)].batches
    by_batch = {c.batch: c for c in choices}
    for (tier, a), v in verdicts.items():
        promise = catalog[tier].tokens_per_s
        for b, c in by_batch.items():
            speed = c.tokens_per_s_per_user if a is not None else c.plain_tokens_per_s_per_user
            assert (b in v.batches) == (speed >= promise)
        assert v.max_batch == max(v.batches, default=None)
    assert verdicts[("super", 0.9)].max_batch == max(
        (b for b, c in by_batch.items() if c.tokens_per_s_per_user >= super_), default=None
    )


def test_fits_recover_a_linear_step_cost():
    base, per_decode, per_draft, verify = 0.005, 1e-4, 2e-5, 1e-3
    step_s = {
        b: {k: base + per_decode * b + per_draft * b * k + (verify if k else 0) for k in range(9)}
        for b in (1, 2, 4, 8, 16)
    }
    fits = svc.fit_costs(step_s)
    f = fits["with_verify_step"]
    assert f["per_draft_token_s"] == pytest.approx(per_draft)
    assert f["verify_step_s"] == pytest.approx(verify)
    assert f["base_s"] == pytest.approx(base) and f["per_decode_s"] == pytest.approx(per_decode)
    # The scheduler's features have no verify-step term: it lands on the draft tokens.
    assert fits["scheduler_features"]["per_draft_token_s"] > per_draft
    for b, fb in fits["per_batch"].items():
        assert fb["per_draft_token_s"] == pytest.approx(per_draft)
        assert fb["decode_step_s"] == pytest.approx(step_s[int(b)][0])
    # Too few points to determine a fit: None, not a made-up number.
    assert svc.fit_costs({1: {0: 0.01, 1: 0.02}})["per_batch"]["1"] is None
    empty = svc.fit_costs({})  # a run whose budget went before the first batch
    assert empty == {"scheduler_features": None, "with_verify_step": None, "per_batch": {}}


def test_parse_acceptance(tmp_path):
    assert [a.rate for a in svc.parse_acceptance(None)] == list(svc.DEFAULT_ACCEPTANCE)
    assert [a.rate for a in svc.parse_acceptance("0.6, 0.8")] == [0.6, 0.8]
    f = tmp_path / "acc.json"
    f.write_text(json.dumps({"acceptance": {"ngram": 0.55, "draft": 0.8}}))
    assert [(a.label, a.rate) for a in svc.parse_acceptance(str(f))] == [
        ("ngram", 0.55),
        ("draft", 0.8),
    ]
    f.write_text("[0.4, 0.7]")
    assert [a.rate for a in svc.parse_acceptance(str(f))] == [0.4, 0.7]
    f.write_text("0.65")
    assert [a.rate for a in svc.parse_acceptance(str(f))] == [0.65]
    # The speculation bench's cells: one rate per proposer and workload, over its batches.
    cell = {"workload": "chat", "proposer": "ngram"}
    f.write_text(json.dumps({"speculation": {"cells": [
        cell | {"batch": 1, "speculative": {"draft_tokens": 100, "accepted_tokens": 50}},
        cell | {"batch": 4, "speculative": {"draft_tokens": 300, "accepted_tokens": 250}},
        cell | {"proposer": "draft", "speculative": {"draft_tokens": 0, "accepted_tokens": 0}},
    ]}}))  # fmt: skip
    [acc] = svc.parse_acceptance(str(f))
    assert acc.rate == pytest.approx(300 / 400) and acc.label.startswith("ngram on chat")
    with pytest.raises(ValueError):
        svc.parse_acceptance("1.5")
