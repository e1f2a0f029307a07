"""Without the bench extra, `tokenfactory bench` says how to install it instead of failing."""

from __future__ import annotations

import importlib.util

import pytest
from typer.testing import CliRunner

from tokenfactory.bench import extra
from tokenfactory.cli import app


def test_bench_names_the_extra_when_matplotlib_is_missing(monkeypatch: pytest.MonkeyPatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name)
    )
    result = CliRunner().invoke(app, ["bench", "engine", "--help"])
    assert result.exit_code == 2
    assert "matplotlib" in result.output and extra.INSTALL in result.output


def test_bench_runs_when_the_extra_is_installed():
    assert extra.missing_bench_modules() == []
    result = CliRunner().invoke(app, ["bench", "engine", "--help"])
    assert result.exit_code == 0, result.output
