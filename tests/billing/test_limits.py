from __future__ import annotations

import pytest

from tokenfactory.billing import Billing, RateLimitExceededError
from tokenfactory.billing.limits import TokenBucket, format_duration

from .conftest import settle_simple


def admit(billing, key, rid, tier, prompt=10, completion=10):
    return billing.admit(key, request_id=rid, model="m", tier=tier, prompt_tokens=prompt,
                         max_completion_tokens=completion)


def test_bucket_refills_at_capacity_per_minute():
    b = TokenBucket.full(60, now=0.0)
    b.take(60)
    assert b.wait_for(1) == pytest.approx(1.0)
    b.refill(0.5)
    assert b.level == pytest.approx(0.5)
    b.refill(1000.0)
    assert b.level == 60  # capped
    assert b.reset_in() == 0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.0174, "18ms"), (1, "1s"), (1.5, "1.5s"), (59.9991, "1m0s"), (360, "6m0s")],
)
def test_reset_durations_use_openais_format(seconds, text):
    assert format_duration(seconds) == text


def test_requests_per_minute(billing: Billing, catalog, clock):
    key, _ = billing.create_key("k", "standard", rpm=2)
    tier = catalog["standard"]
    admit(billing, key, "a", tier)
    admit(billing, key, "b", tier)
    with pytest.raises(RateLimitExceededError) as info:
        admit(billing, key, "c", tier)
    exc = info.value
    assert exc.limit_type == "requests" and exc.status_code == 429
    assert exc.code == "rate_limit_exceeded"
    assert exc.retry_after_s == pytest.approx(30.0)  # 2 per minute: one every 30 s
    assert exc.headers["retry-after"] == "30"
    assert exc.headers["x-ratelimit-remaining-requests"] == "0"
    assert exc.headers["x-ratelimit-limit-requests"] == "2"
    clock.advance(30)
    admit(billing, key, "c", tier)  # refilled one request
    assert billing.budget_state(key).reserved_micro_usd > 0  # refusals reserved nothing extra


def test_tokens_per_minute_charge_the_maximum_and_refund_unused(billing: Billing, catalog, clock):
    key, _ = billing.create_key("k", "standard", tpm=1000)
    tier = catalog["standard"]
    res = admit(billing, key, "a", tier, prompt=100, completion=500)
    headers = billing.rate_limit_headers(key)
    assert headers["x-ratelimit-remaining-tokens"] == "400"
    with pytest.raises(RateLimitExceededError) as info:
        admit(billing, key, "b", tier, prompt=100, completion=400)
    assert info.value.limit_type == "tokens"
    assert info.value.retry_after_s == pytest.approx(100 / (1000 / 60))
    settle_simple(billing, res, tier, prompt=100, completion=50)  # 450 unused come back
    assert billing.rate_limit_headers(key)["x-ratelimit-remaining-tokens"] == "850"
    admit(billing, key, "b", tier, prompt=100, completion=400)


def test_a_request_larger_than_the_tpm_limit_is_refused_outright(billing: Billing, catalog):
    key, _ = billing.create_key("k", "standard", tpm=100)
    with pytest.raises(RateLimitExceededError, match="too large"):
        admit(billing, key, "a", catalog["standard"], prompt=80, completion=80)


def test_headers_for_keys_with_and_without_limits(billing: Billing, catalog, clock):
    free, _ = billing.create_key("free", "standard")
    assert billing.rate_limit_headers(free) == {}
    key, _ = billing.create_key("k", "standard", rpm=60, tpm=6000)
    admit(billing, key, "a", catalog["standard"], prompt=100, completion=500)
    h = billing.rate_limit_headers(key)
    assert h == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "6000",
        "x-ratelimit-remaining-tokens": "5400",
        "x-ratelimit-reset-tokens": "6s",
    }
    clock.advance(6)
    assert billing.rate_limit_headers(key)["x-ratelimit-reset-tokens"] == "0s"
