"""A fleet front's per-replica series in /metrics, read the way an operator's scraper would."""

from __future__ import annotations

import re

import httpx

from tests.server.conftest import ServerProcess


def replica_series(front: ServerProcess, name: str) -> dict[str, float]:
    text = httpx.get(front.base_url + "/metrics", timeout=10).text
    pattern = rf'^tokenfactory_replica_{name}\{{replica="(\d+)"\}} (\S+)$'
    return {m[1]: float(m[2]) for m in re.finditer(pattern, text, re.MULTILINE)}


def replica_pids(front: ServerProcess) -> dict[str, int]:
    """Replica index -> its process id."""
    text = httpx.get(front.base_url + "/metrics", timeout=10).text
    pattern = r'^tokenfactory_replica_info\{node="[^"]*",pid="(\d+)",replica="(\d+)"\} 1\.0$'
    return {m[2]: int(m[1]) for m in re.finditer(pattern, text, re.MULTILINE)}
