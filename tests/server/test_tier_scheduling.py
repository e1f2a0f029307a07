"""The `tier` policy end to end: a real server, the embedded model, generous margins.

Timing tier: whether a 20 tokens/s tier opens and is kept depends on this machine's speed and
load, so `make test` leaves these out (`make test-timing` runs them); the policy's logic is
pinned without clocks in tests/scheduling."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from tests.server.conftest import MODEL, ledger_rows, start_server

pytestmark = [pytest.mark.slow, pytest.mark.timing]

# super promises 20 tokens/s: one stream alone decodes at 30-45 here, 21 streams together
# at about 13-16 each, so only pacing keeps the promise.
TIERS = """
default_tier = "standard"
[tiers.free]
sheddable = true
[tiers.standard]
output_usd_per_mtok = "3"
[tiers.super]
output_usd_per_mtok = "150"
[presets.cpu]
free = { tokens_per_s = 0.2, ttft_s = 20 }
standard = { tokens_per_s = 1, ttft_s = 600 }
super = { tokens_per_s = 20, ttft_s = 5 }
"""


@pytest.fixture(scope="module")
def tier_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("tier")
    (d / "tiers.toml").write_text(TIERS)
    server = start_server(d, "--policy", "tier", "--tiers", str(d / "tiers.toml"))
    yield server
    server.stop()


async def _stream(client: openai.AsyncOpenAI, tier: str, max_tokens: int, i: int):
    t0 = time.monotonic()
    stamps = []
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": f"Tell story number {i}."}],
        max_tokens=max_tokens, stream=True, service_tier=tier, extra_body={"ignore_eos": True},
    )
    rid = None
    async for chunk in stream:
        rid = chunk.id
        if chunk.choices and chunk.choices[0].delta.content:
            stamps.append(time.monotonic())
    return rid, t0, stamps


def _need_super_open(server) -> None:
    tiers = httpx.get(server.base_url + "/v1/tiers").json()["data"]
    if not next(t for t in tiers if t["name"] == "super")["available"]:
        pytest.skip("this machine is too slow or too loaded to open a 20 tokens/s tier")


def test_super_keeps_its_speed_while_20_free_streams_run(tier_server):
    _need_super_open(tier_server)
    client = openai.AsyncOpenAI(base_url=tier_server.base_url + "/v1",
                                api_key=tier_server.keys["super"], max_retries=0, timeout=600)

    async def run():
        free = [asyncio.ensure_future(_stream(client, "free", 120, i)) for i in range(20)]
        await asyncio.sleep(3.0)  # the free streams are all decoding
        sup = await _stream(client, "super", 60, 99)
        for f in free:
            f.cancel()
        await asyncio.gather(*free, return_exceptions=True)
        return sup

    rid, t0, stamps = asyncio.run(run())
    row = ledger_rows(tier_server.data_dir)[rid]
    assert row["completion_tokens"] == 60
    assert row["decode_tokens_per_s"] >= 20, row  # the promised speed, kept
    # Admission is still conservative: when this machine runs slower than at its probe, the
    # super request can wait several seconds for room (9 s seen once in CI; docs/scheduling.md).
    # The issue asks for the speed; the first token gets a generous bound here.
    assert row["ttft_s"] <= 30, row


def test_free_is_shed_with_retry_after_only_when_capacity_is_gone(tier_server):
    _need_super_open(tier_server)  # the load that fills the engine is super streams
    free_key = tier_server.keys["free"]
    url = tier_server.base_url + "/v1/chat/completions"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
            "service_tier": "free"}
    # an idle factory serves free work
    r = httpx.post(url, json=body, headers={"Authorization": f"Bearer {free_key}"}, timeout=120)
    assert r.status_code == 200, r.text
    client = openai.AsyncOpenAI(base_url=tier_server.base_url + "/v1",
                                api_key=tier_server.keys["super"], max_retries=0, timeout=600)

    async def run():
        # more super streams than the engine can pace at 20 tokens/s each
        paid = [asyncio.ensure_future(_stream(client, "super", 40, i)) for i in range(48)]
        # While the first super requests run and the rest wait for room, capacity is gone for
        # free work. After half their 5 s TTFT the waiting ones are let in up to a full load
        # (`last_call`); from then on free work may be judged able to start within a tenth
        # of its TTFT, and it would wait instead of being shed (the test was flaky at 4 s).
        await asyncio.sleep(1.5)
        async with httpx.AsyncClient(timeout=120) as h:
            free = await asyncio.gather(*(
                h.post(url, json=body, headers={"Authorization": f"Bearer {free_key}"})
                for _ in range(6)))
        paid_results = await asyncio.gather(*paid, return_exceptions=True)
        return free, paid_results

    free, paid = asyncio.run(run())
    shed = [r for r in free if r.status_code == 429]
    assert shed, [r.status_code for r in free]
    err = shed[0].json()["error"]
    assert err["code"] == "tier_overloaded" and err["param"] == "service_tier"
    assert int(shed[0].headers["retry-after"]) >= 1
    # paid work is never shed: it waits for capacity and completes
    assert all(not isinstance(p, BaseException) for p in paid), paid
    rows = ledger_rows(tier_server.data_dir)
    shed_rows = [x for x in rows.values() if x["finish_reason"] == "shed"]
    assert len(shed_rows) == len(shed) and all(x["amount_micro_usd"] == 0 for x in shed_rows)
