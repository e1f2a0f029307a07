"""`serve --replicas 2` where Ray is not installed: one line naming the extra, exit 2, and
nothing loaded first."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.server.conftest import free_port

pytestmark = pytest.mark.integration

HIDE_RAY = (
    "import sys; sys.modules['ray'] = None; sys.argv[0] = 'tokenfactory'; "
    "from tokenfactory.cli import app; app()"
)


def test_serve_replicas_without_ray_names_the_fleet_extra(tmp_path):
    cmd = [sys.executable, "-c", HIDE_RAY, "serve", "--replicas", "2"]
    cmd += ["--port", str(free_port()), "--data-dir", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "tokenfactory[fleet]" in lines[0] and "--replicas" in lines[0]
    assert not (tmp_path / "ledger.db").exists()


def test_a_step_log_is_refused_for_a_fleet_before_anything_starts(tmp_path):
    from tokenfactory.server.run import ServeOptions, build_factory

    opts = ServeOptions(data_dir=tmp_path, replicas=2, step_log=tmp_path / "steps.jsonl")
    with pytest.raises(ValueError, match="--step-log records one engine's steps"):
        build_factory(opts)
    assert not (tmp_path / "steps.jsonl").exists()
