"""The queued prompt rate: prompt tokens computed per second in steps that had a queue."""

from __future__ import annotations

import math

import pytest

from tokenfactory.scheduling.queued_prompt_rate import QueuedPromptRate


def test_no_estimate_until_enough_queued_time_is_seen():
    rate = QueuedPromptRate(window_s=5.0, min_evidence_s=1.0)
    assert rate.tokens_per_s() is None and rate.wait_s(100) is None
    for _ in range(7):
        rate.observe(0.125, 50, num_waiting=3)
    assert rate.tokens_per_s() is None  # 0.875 s of queued steps
    rate.observe(0.125, 50, num_waiting=3)
    assert rate.tokens_per_s() == pytest.approx(400.0)
    assert rate.wait_s(1000) == pytest.approx(2.5)


def test_steps_without_a_queue_do_not_count():
    # Idle-ish steps compute few prompt tokens because few arrive, not because the engine
    # cannot: they would make a queue look slower than it is.
    rate = QueuedPromptRate(min_evidence_s=0.5)
    for _ in range(10):
        rate.observe(0.1, 0, num_waiting=0)
        rate.observe(0.1, 100, num_waiting=1)
    assert rate.tokens_per_s() == pytest.approx(1000.0)


def test_the_rate_follows_the_most_recent_window():
    rate = QueuedPromptRate(window_s=2.0, min_evidence_s=1.0)
    for _ in range(40):
        rate.observe(0.1, 100, num_waiting=5)  # 1,000 tokens/s
    for _ in range(20):
        rate.observe(0.1, 20, num_waiting=5)  # then 200 tokens/s for a whole window
    assert rate.tokens_per_s() == pytest.approx(200.0, rel=0.06)


def test_queued_steps_that_computed_no_prompt_predict_an_endless_wait():
    rate = QueuedPromptRate(min_evidence_s=0.5)
    for _ in range(10):
        rate.observe(0.1, 0, num_waiting=4)
    assert rate.tokens_per_s() == 0.0
    assert math.isinf(rate.wait_s(10))
