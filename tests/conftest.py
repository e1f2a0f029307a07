"""The suite's tiers: every test lands in exactly one.

- unit: in-process, no model file, no compiled kernels, no server process, no database
  server (SQLite files in a temporary directory are fine); the fast tier (`make test-fast`).
- integration: real parts together without the embedded model: the native kernels (built
  with a compiler), other processes (the command line, a killed writer), PostgreSQL.
- e2e: the real embedded model, in-process or behind a real server process.
- gpu: needs CUDA; skips with a reason elsewhere.
- timing: its verdict depends on this machine's speed. A benchmark kept as a check:
  `make test` leaves it out, `make test-timing` runs it.

A test says its tier with a marker (on the function, the class or the module's
`pytestmark`; where several apply, the later in the list above wins); `slow`, or a fixture
that loads the embedded model, means e2e; a test with no marker gets its directory's tier,
else unit.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

TIERS = ("unit", "integration", "e2e", "gpu", "timing")
_DIRECTORY_TIERS = {"gpu": "gpu", "e2e": "e2e", "kernels": "integration"}
# Fixtures that load the embedded model or start a server on it (directly or through others).
_MODEL_FIXTURES = {"embedded_path", "embedded_model", "embedded_files", "factory_server"}
_ROOT = Path(__file__).resolve().parent


def tier_of(item: pytest.Item) -> str:
    marked = {m.name for m in item.iter_markers() if m.name in TIERS}
    uses_model = _MODEL_FIXTURES.intersection(getattr(item, "fixturenames", ()))
    if item.get_closest_marker("slow") is not None or uses_model:
        marked.add("e2e")
    if marked:  # a module's tier with one heavier test in it: the heavier one counts
        return max(marked, key=TIERS.index)
    parts = Path(str(item.path)).resolve().relative_to(_ROOT).parts
    return _DIRECTORY_TIERS.get(parts[0], "unit") if len(parts) > 1 else "unit"


# Tests that share one PostgreSQL server (some stop and start it) or start a Ray cluster: under
# parallel workers (`pytest -n`) one worker runs them all, one after another.
_SHARED_SERVICE_FILES = {
    "billing/test_chaos_e2e.py",
    "billing/test_fronts_e2e.py",
    "billing/test_postgres.py",
    "billing/test_shared_fronts.py",
    "fleet/test_fleet_e2e.py",
}
SHARED_SERVICES = "shared-services"


def work_unit(nodeid: str) -> str:
    """What one parallel worker runs as a unit: the shared-service tests together, else one
    file's tests (so its module fixtures, often a server process, start once)."""
    path = nodeid.split("::", 1)[0]
    return SHARED_SERVICES if path.removeprefix("tests/") in _SHARED_SERVICE_FILES else path


if importlib.util.find_spec("xdist") is not None:  # a hook pytest rejects without the plugin

    def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
        """pytest-xdist's file scheduling with the shared-service files as one unit. (Its
        `xdist_group` marks do not take under pytest 9: the group never reaches the node id.)"""
        from xdist.scheduler import LoadScopeScheduling

        class SharedServiceScheduling(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                return work_unit(nodeid)

        return SharedServiceScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = tier_of(item)
        if item.get_closest_marker(tier) is None:
            item.add_marker(tier)
