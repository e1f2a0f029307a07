"""What crosses between replicas and the front, without Ray: errors keep their fields, times
move onto the front's clock, and a missing Ray is one clear error."""

from __future__ import annotations

import pickle
import sys

import pytest

from tokenfactory.engine.errors import (
    ContextLengthExceededError,
    EngineClosedError,
    EngineStepError,
    InvalidRequestError,
)
from tokenfactory.engine.outputs import RequestOutput
from tokenfactory.fleet.errors import FleetUnavailableError
from tokenfactory.fleet.inboxes import shifted
from tokenfactory.fleet.messages import ReplicaError


@pytest.mark.parametrize(
    "exc",
    [
        ContextLengthExceededError("too long", "prompt"),
        InvalidRequestError("bad stop", "stop"),
        EngineStepError("a step failed"),
        EngineClosedError("shut down"),
    ],
)
def test_engine_errors_cross_as_data_and_come_back_as_themselves(exc):
    sent = pickle.loads(pickle.dumps(ReplicaError.of(exc)))
    back = sent.exception()
    assert type(back) is type(exc)
    assert str(back) == str(exc)
    assert getattr(back, "param", None) == getattr(exc, "param", None)


def test_other_errors_are_not_swallowed():
    with pytest.raises(KeyError):
        ReplicaError.of(KeyError("x"))


def test_output_times_move_by_the_clock_shift_and_none_stays_none():
    out = RequestOutput("r", [1], "a", None, False, None, None, 3, 0, 0, 10.0, 11.0, None, None)
    moved = shifted(out, 5.0)
    assert (moved.arrival_time, moved.first_token_time) == (15.0, 16.0)
    assert moved.finished_time is None and moved.first_scheduled_time is None
    assert moved.token_ids == [1] and out.arrival_time == 10.0


def test_replicas_without_ray_is_one_error_naming_the_extra(monkeypatch):
    from tokenfactory.fleet.start import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(FleetUnavailableError, match=r"tokenfactory\[fleet\]"):
        import_ray()


def test_a_dead_replica_engine_fails_its_streams_and_refuses_new_requests_as_closed():
    from tokenfactory.engine.errors import EngineDeadError
    from tokenfactory.engine.health import EngineHealth

    dead = EngineDeadError(EngineHealth().died("three steps failed"))
    assert type(ReplicaError.of(dead).exception()) is EngineStepError  # the fleet serves on
    refused = ReplicaError.of(dead, queuing=True)
    assert refused.kind == "closed"  # the front sends the request to another replica
