from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from tokenfactory.billing import Billing, BillingInputError, TierNotAllowedError
from tokenfactory.billing.db import LedgerRow, ReservationRow

from .conftest import settle_simple


def admit(billing, key, rid, tier, prompt=1000, completion=200):
    return billing.admit(key, request_id=rid, model="smollm2", tier=tier, prompt_tokens=prompt,
                         max_completion_tokens=completion)


def count(billing, model) -> int:
    with billing.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(model)).scalar()


def test_reservation_holds_the_maximum_cost_and_is_persisted(billing: Billing, catalog):
    key, _ = billing.create_key("k", "ultra")
    tier = catalog["ultra"]  # $11.25 in, $45 out per million
    res = admit(billing, key, "r1", tier, prompt=1000, completion=200)
    assert res.reserved_micro_usd == 11_250 + 9_000
    assert res.reserved_tokens == 1200
    assert billing.budget_state(key).reserved_micro_usd == 20_250
    assert count(billing, ReservationRow) == 1


def test_settle_bills_exactly_at_the_tier_delivered(billing: Billing, catalog):
    key, _ = billing.create_key("k", "ultra", account="acme")
    res = admit(billing, key, "r1", catalog["ultra"])
    high = catalog["high"]  # $1.5 in, $0.15 cached, $6 out
    entry = settle_simple(billing, res, high, prompt=1000, cached=600, completion=150,
                          ttft_s=0.4, decode_tokens_per_s=12.5, queue_time_s=0.05)
    # 400 * 1.5 + 600 * 0.15 + 150 * 6 = 600 + 90 + 900 micro-dollars
    assert entry.amount_micro_usd == 1590
    assert (entry.tier_requested, entry.tier_delivered) == ("ultra", "high")
    assert (entry.input_price, entry.cached_input_price, entry.output_price) == (
        1_500_000, 150_000, 6_000_000)
    assert entry.account == "acme" and entry.key_id == key.key_id and entry.model == "smollm2"
    assert entry.status == "settled" and entry.finish_reason == "stop"
    assert (entry.ttft_s, entry.decode_tokens_per_s, entry.queue_time_s) == (0.4, 12.5, 0.05)
    assert entry.created_at <= entry.finished_at and entry.finished_at.tzinfo is not None
    state = billing.budget_state(key)
    assert (state.spent_micro_usd, state.reserved_micro_usd) == (1590, 0)
    assert count(billing, ReservationRow) == 0
    assert billing.get_entry("r1") == entry


def test_amounts_round_up_to_a_whole_micro_dollar(billing: Billing, catalog):
    key, _ = billing.create_key("k", "standard")
    res = admit(billing, key, "r1", catalog["standard"], prompt=1, completion=1)
    # 0.75 + 3 = 3.75 micro-dollars -> 4
    assert settle_simple(billing, res, catalog["standard"], prompt=1, completion=1
                         ).amount_micro_usd == 4


def test_settle_is_idempotent(billing: Billing, catalog):
    key, _ = billing.create_key("k", "high")
    res = admit(billing, key, "r1", catalog["high"])
    first = settle_simple(billing, res, catalog["high"], prompt=1000, completion=10)
    second = settle_simple(billing, res, catalog["high"], prompt=1000, completion=200,
                           reason="length")
    assert second == first
    assert count(billing, LedgerRow) == 1
    assert billing.budget_state(key).spent_micro_usd == first.amount_micro_usd


def test_concurrent_settles_of_one_request_bill_once(billing: Billing, catalog):
    key, _ = billing.create_key("k", "high")
    res = admit(billing, key, "r1", catalog["high"])
    results = []
    barrier = threading.Barrier(8)

    def go() -> None:
        barrier.wait()
        results.append(settle_simple(billing, res, catalog["high"], prompt=1000, completion=5))

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and len({r.request_id for r in results}) == 1
    assert len(set(results)) == 1
    assert count(billing, LedgerRow) == 1
    assert billing.budget_state(key).spent_micro_usd == results[0].amount_micro_usd


def test_error_and_disconnect_paths_settle_and_release_the_hold(billing: Billing, catalog):
    key, _ = billing.create_key("k", "high", budget_micro_usd=10_000)
    tier = catalog["high"]
    res = admit(billing, key, "err", tier)
    entry = settle_simple(billing, res, tier, reason="error", error="engine failed",
                          ttft_s=None, decode_tokens_per_s=None)
    assert entry.amount_micro_usd == 0 and entry.error == "engine failed"
    res = admit(billing, key, "gone", tier)
    entry = settle_simple(billing, res, tier, prompt=1000, completion=3, reason="abort",
                          client_disconnected=True)
    assert entry.client_disconnected and entry.amount_micro_usd == 1500 + 18
    assert billing.open_reservations() == []
    assert billing.budget_state(key).committed_micro_usd == 1518


def test_cached_tokens_are_capped_at_the_prompt(billing: Billing, catalog):
    key, _ = billing.create_key("k", "high")
    res = admit(billing, key, "r", catalog["high"])
    entry = settle_simple(billing, res, catalog["high"], prompt=10, cached=50, completion=0)
    assert entry.cached_tokens == 10 and entry.amount_micro_usd == 2  # 10 * 0.15 -> 1.5 -> 2


def test_admission_checks_the_tier_and_request_ids(billing: Billing, catalog):
    key, _ = billing.create_key("k", "standard")
    with pytest.raises(TierNotAllowedError):
        admit(billing, key, "r", catalog["super"])
    admit(billing, key, "r", catalog["standard"])
    with pytest.raises(BillingInputError):
        admit(billing, key, "r", catalog["standard"])
    with pytest.raises(BillingInputError):
        admit(billing, key, "", catalog["standard"])
    with pytest.raises(BillingInputError):
        admit(billing, key, "x", catalog["standard"], prompt=-1)
    assert len(billing.open_reservations()) == 1
