"""`tokenfactory serve` turns its flags into ServeOptions (no model, no server started)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tokenfactory.cli import app
from tokenfactory.server import run
from tokenfactory.server.run import ServeOptions


@pytest.fixture
def captured(monkeypatch) -> list[ServeOptions]:
    seen: list[ServeOptions] = []
    monkeypatch.setattr(run, "serve", seen.append)
    return seen


def test_the_engine_is_marked_dead_after_three_failed_steps_unless_told(captured):
    assert CliRunner().invoke(app, ["serve"]).exit_code == 0
    assert CliRunner().invoke(app, ["serve", "--max-step-failures", "7"]).exit_code == 0
    assert [o.max_step_failures for o in captured] == [3, 7]


def test_a_threshold_below_one_is_a_usage_error(captured):
    res = CliRunner().invoke(app, ["serve", "--max-step-failures", "0"])
    assert res.exit_code == 2 and "max-step-failures" in res.output
    assert not captured
