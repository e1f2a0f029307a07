from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tokenfactory.billing import Billing, InsufficientQuotaError

from .conftest import settle_simple


def test_a_request_that_could_exceed_the_budget_is_refused(billing: Billing, catalog):
    tier = catalog["high"]  # $6 per million output tokens
    key, _ = billing.create_key("k", "high", budget_micro_usd=1000)
    res = billing.admit(key, request_id="a", model="m", tier=tier, prompt_tokens=0,
                        max_completion_tokens=100)  # holds 600
    with pytest.raises(InsufficientQuotaError) as info:
        billing.admit(key, request_id="b", model="m", tier=tier, prompt_tokens=0,
                      max_completion_tokens=100)
    exc = info.value
    assert (exc.budget_micro_usd, exc.committed_micro_usd) == (1000, 600)
    assert exc.status_code == 429 and exc.code == "insufficient_quota"
    settle_simple(billing, res, tier, completion=10)  # costs 60, releases 540
    billing.admit(key, request_id="b", model="m", tier=tier, prompt_tokens=0,
                  max_completion_tokens=100)
    state = billing.budget_state(key)
    assert (state.spent_micro_usd, state.reserved_micro_usd) == (60, 600)
    assert state.remaining_micro_usd == 340


def test_free_tier_costs_nothing_and_never_runs_out(billing: Billing, catalog):
    key, _ = billing.create_key("k", "free", budget_micro_usd=0)
    for i in range(5):
        res = billing.admit(key, request_id=f"r{i}", model="m", tier=catalog["free"],
                            prompt_tokens=100, max_completion_tokens=100)
        assert settle_simple(billing, res, catalog["free"], prompt=100,
                             completion=100).amount_micro_usd == 0


def test_budget_holds_under_50_concurrent_threads(billing: Billing, catalog):
    tier = catalog["ultra"]
    budget = 200_000
    key, _ = billing.create_key("k", "ultra", budget_micro_usd=budget)
    lock = threading.Lock()
    peak = 0
    admitted = refused = 0

    def one(i: int) -> None:
        nonlocal peak, admitted, refused
        rng = random.Random(i)
        for j in range(6):
            try:
                res = billing.admit(key, request_id=f"r{i}-{j}", model="m", tier=tier,
                                    prompt_tokens=rng.randint(10, 500),
                                    max_completion_tokens=rng.randint(10, 500))
            except InsufficientQuotaError:
                with lock:
                    refused += 1
                continue
            state = billing.budget_state(key)
            with lock:
                admitted += 1
                peak = max(peak, state.committed_micro_usd)
            used = rng.randint(0, 500)
            settle_simple(billing, res, tier, prompt=res.admitted_prompt_tokens,
                          cached=rng.randint(0, 10),
                          completion=min(used, res.max_completion_tokens))

    with ThreadPoolExecutor(50) as pool:
        list(pool.map(one, range(50)))
    state = billing.budget_state(key)
    assert admitted > 0 and refused > 0
    assert peak <= budget
    assert state.reserved_micro_usd == 0 and billing.open_reservations() == []
    assert state.spent_micro_usd <= budget
    ledger_total = sum(r.amount_micro_usd for r in billing.usage(key_id=key.key_id))
    assert ledger_total == state.spent_micro_usd
    assert len(billing.entries(key_id=key.key_id)) == admitted


def test_spent_is_reloaded_from_the_ledger_at_open(catalog, data_dir):
    b = Billing.open(catalog, data_dir=data_dir, progress_interval_s=0)
    key, _ = b.create_key("k", "high", budget_micro_usd=1000)
    res = b.admit(key, request_id="a", model="m", tier=catalog["high"], prompt_tokens=0,
                  max_completion_tokens=100)
    settle_simple(b, res, catalog["high"], completion=100)
    b.close()
    b = Billing.open(catalog, data_dir=data_dir, progress_interval_s=0)
    assert b.budget_state(key).spent_micro_usd == 600
    with pytest.raises(InsufficientQuotaError):
        b.admit(key, request_id="b", model="m", tier=catalog["high"], prompt_tokens=0,
                max_completion_tokens=100)
    b.close()
