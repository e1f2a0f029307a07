"""Parallel workers (`make test` runs pytest-xdist): every test module that uses the shared
PostgreSQL server (which some tests stop and start) or starts a Ray cluster is in the group one
worker runs alone, so no test loses its database to another worker's restart."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import _SHARED_SERVICE_FILES, SHARED_SERVICES, work_unit

_ROOT = Path(__file__).resolve().parent
# What marks a module as using the shared services.
_USES_SHARED = re.compile(r"\bpg_url\b|POSTGRES_URL|\bPG_URL\b|importorskip\(\s*\"ray\"")


def test_every_module_using_postgres_or_ray_is_in_the_shared_group():
    users = {
        p.relative_to(_ROOT).as_posix()
        for p in _ROOT.rglob("test_*.py")
        if p.name != Path(__file__).name and _USES_SHARED.search(p.read_text())
    }
    assert users, "the pattern finds no module: it no longer matches how tests reach them"
    assert users <= _SHARED_SERVICE_FILES, sorted(users - _SHARED_SERVICE_FILES)


def test_the_shared_group_names_existing_modules():
    assert all((_ROOT / f).is_file() for f in _SHARED_SERVICE_FILES)


def test_a_worker_takes_the_shared_services_as_one_unit_and_other_files_whole():
    units = {work_unit(f"tests/{f}::test_x") for f in _SHARED_SERVICE_FILES}
    assert units == {SHARED_SERVICES}
    assert work_unit("tests/e2e/test_cli.py::test_a[1]") == "tests/e2e/test_cli.py"
    assert work_unit("tests/e2e/test_cli.py::TestX::test_b") == "tests/e2e/test_cli.py"
