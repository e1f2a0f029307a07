"""A real fake endpoint in a child process on a free loopback port, and helpers to drive it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from rich.console import Console

from tokenfactory.bench.serve.runner import LoadPoint, Runner, RunOptions, api_url, run_point
from tokenfactory.bench.serve.selfbench import start_fake_server
from tokenfactory.bench.serve.tiers_info import KeyRing, fetch_catalog
from tokenfactory.bench.serve.workloads import WorkloadOptions


class Endpoint:
    def __init__(self, base: str) -> None:
        self.base = base

    def stats(self) -> dict:
        return httpx.get(f"{self.base}/fake/stats").json()

    def reset(self) -> None:
        httpx.post(f"{self.base}/fake/reset")


@contextmanager
def fake_endpoint(**config) -> Iterator[Endpoint]:
    proc, base = start_fake_server(["--config-json", json.dumps(config), "--keep-bodies"])
    try:
        yield Endpoint(base)
    finally:
        proc.terminate()
        proc.wait(5)


def run_load(
    base: str,
    point: LoadPoint,
    num_prompts: int = 10,
    workload: WorkloadOptions | None = None,
    keys: KeyRing | None = None,
    **run_kw,
):
    catalog = fetch_catalog(httpx.Client(), base, "gpu", None)
    opts = RunOptions(
        api_url(base), "fake-model", num_prompts=num_prompts, progress=False, **run_kw
    )
    runner = Runner(
        opts,
        workload or WorkloadOptions("random", input_len="16", output_len="8"),
        catalog,
        keys or KeyRing(),
        Console(stderr=True, quiet=True),
    )
    return run_point(runner, point), catalog


@pytest.fixture(scope="module")
def fast_endpoint() -> Iterator[Endpoint]:
    with fake_endpoint() as ep:
        yield ep
