"""`tokenfactory serve --replicas 2` as a real process with the embedded model: requests
through both replicas, prefix affinity, and a replica killed under load.

One server for the module: starting Ray and two replicas takes a while on a small machine.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import openai
import pytest

from tests.fleet.replica_metrics import replica_pids, replica_series
from tests.server.conftest import MODEL, ServerProcess, ledger_rows, open_reservations, start_server
from tokenfactory.bench.local_factory import open_tiers_toml

pytest.importorskip("ray")
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

LONG_SHARED = (
    "You are reviewing a shipping manifest for a warehouse in Rotterdam. Every line lists "
    "a pallet number, its weight in kilograms and the name of the receiving company. "
    "Answer each question about the manifest in one short sentence, giving the number. "
)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> ServerProcess:
    data = tmp_path_factory.mktemp("fleet")
    tiers = data / "pooled-tiers.toml"  # promises any machine keeps, and a pool for ultra
    tiers.write_text(open_tiers_toml() + "\n[pools]\nultra = [1]\n")
    server = start_server(data, "--replicas", "2", "--tiers", str(tiers), timeout=400)
    yield server
    server.stop()


def chat(
    client: openai.OpenAI, content: str, max_tokens: int = 8, ignore_eos: bool = False
) -> dict:
    """Stream one chat completion; what the client saw, or the error that ended it."""
    seen: dict = {"id": None, "chunks": 0, "finish": None, "usage": None, "error": None}
    try:
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": content}],
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True} if ignore_eos else None,
        )
        for chunk in stream:
            seen["id"] = chunk.id
            if chunk.usage is not None:
                seen["usage"] = chunk.usage.completion_tokens
            for choice in chunk.choices:
                if choice.delta.content:
                    seen["chunks"] += 1
                if choice.finish_reason:
                    seen["finish"] = choice.finish_reason
    except openai.APIError as exc:
        seen["error"] = exc
    return seen


def in_parallel(fn, args: list) -> list:
    results: list = [None] * len(args)

    def run(i: int) -> None:
        results[i] = fn(*args[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(args))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return results


def test_requests_stream_through_both_replicas(fleet):
    client = fleet.openai("super")
    before = replica_series(fleet, "routed_requests_total")
    prompts = [
        f"{word} is a word. Write one sentence about it."
        for word in ("Apple", "River", "Stone", "Cloud", "Lamp", "Tiger", "Paper", "Glass")
    ]
    results = in_parallel(lambda p: chat(client, p), [(p,) for p in prompts])
    assert all(r["error"] is None and r["finish"] in ("stop", "length") for r in results), results
    after = replica_series(fleet, "routed_requests_total")
    served = {k: after[k] - before.get(k, 0) for k in after}
    assert set(served) == {"0", "1"}
    assert sum(served.values()) == len(prompts)
    assert all(n > 0 for n in served.values()), served
    rows = ledger_rows(fleet.data_dir)
    for r in results:
        assert rows[r["id"]]["completion_tokens"] == r["usage"]


def test_the_fleet_reads_as_one_engine_on_the_status_pages(fleet):
    assert httpx.get(fleet.base_url + "/ready").json()["status"] == "ready"
    step_model = httpx.get(fleet.base_url + "/v1/tiers").json()["step_model"]
    assert step_model["prior"] == "probe" and step_model["steps_observed"] > 0
    state = httpx.get(fleet.base_url + "/dashboard/state").json()
    assert state["engine"]["healthy"] and state["policy"] == "tier"


def test_same_prefix_requests_land_on_one_replica(fleet):
    client = fleet.openai("super")
    before = replica_series(fleet, "routed_requests_total")
    for i in range(4):
        r = chat(client, LONG_SHARED + f"Question {i}: how heavy is pallet {i}?")
        assert r["error"] is None
    after = replica_series(fleet, "routed_requests_total")
    served = sorted(after[k] - before.get(k, 0) for k in after)
    assert served == [0, 4]


def test_a_prompt_cache_key_picks_the_replica_instead_of_the_prompt(fleet):
    from tokenfactory.fleet.router import rendezvous_order

    # A key the router places on replica 0 and one it places on replica 1.
    keys = [f"run-{i}" for i in range(20)]
    home = {k: rendezvous_order(k.encode(), [0, 1])[0] for k in keys}
    to_0, to_1 = next(k for k in keys if home[k] == 0), next(k for k in keys if home[k] == 1)
    key = httpx.Headers({"Authorization": f"Bearer {fleet.keys['super']}"})

    def served_by(content: str, cache_key: str) -> int:
        """The replica that served this request (the one whose routed count moved)."""
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 4,
            "prompt_cache_key": cache_key,
        }
        before = replica_series(fleet, "routed_requests_total")
        r = httpx.post(fleet.base_url + "/v1/chat/completions", json=body, headers=key,
                       timeout=120)
        assert r.status_code == 200, r.text
        after = replica_series(fleet, "routed_requests_total")
        moved = [int(k) for k in after if after[k] > before.get(k, 0)]
        assert len(moved) == 1, (before, after)
        return moved[0]

    # One shared prefix under two keys: each key's replica, not the prefix's.
    shared = [LONG_SHARED + f"Question {i}: how heavy is pallet {i}?" for i in range(4)]
    keyed = zip(shared, [to_0, to_1, to_0, to_1], strict=True)
    assert [served_by(content, k) for content, k in keyed] == [0, 1, 0, 1]
    # Other prompts under one key: its replica.
    others = [f"{w} is a word. Say it once." for w in ("Apple", "River")]
    assert [served_by(content, to_1) for content in others] == [1, 1]


def test_a_pooled_tier_runs_on_its_replicas_and_says_so(fleet):
    tiers = {t["name"]: t for t in httpx.get(fleet.base_url + "/v1/tiers").json()["data"]}
    assert tiers["ultra"]["replicas"] == [1]
    assert "replicas" not in tiers["super"]
    client = fleet.openai("ultra")
    before = replica_series(fleet, "routed_requests_total")
    for word in ("Maple", "Harbor", "Violet", "Copper"):
        assert chat(client, f"{word} is a word. Say it once.")["error"] is None
    after = replica_series(fleet, "routed_requests_total")
    assert (after["0"] - before["0"], after["1"] - before["1"]) == (0, 4)


def test_a_killed_replica_retries_or_ends_streams_cleanly_and_comes_back(fleet):
    client = fleet.openai("super")
    pids = replica_pids(fleet)
    assert set(pids) == {"0", "1"}
    # Streams that still run when the replica dies: 160 tokens each, past any EOS (with 48
    # tokens, or an early EOS, a fast replica had finished them before the kill).
    longest = 160
    prompts = [
        (f"Count slowly from {n} to {n + 100}, one number per line.", longest) for n in range(8)
    ]
    results: list = []
    worker = threading.Thread(
        target=lambda: results.extend(
            in_parallel(lambda p, m: chat(client, p, m, ignore_eos=True), prompts)
        )
    )
    worker.start()
    deadline = time.monotonic() + 60
    while sum((in_flight := replica_series(fleet, "in_flight_requests")).values()) < len(prompts):
        assert time.monotonic() < deadline, f"the requests never all started: {in_flight}"
        time.sleep(0.05)
    victim = max(in_flight, key=lambda k: in_flight[k])  # the front's own, exact count
    time.sleep(0.5)  # their first tokens are out
    os.kill(pids[victim], signal.SIGKILL)
    late = in_parallel(lambda p: chat(client, p, 16), [(f"Name {n} colours.",) for n in range(3)])
    worker.join(300)
    outcomes = results + late
    assert len(outcomes) == len(prompts) + 3

    rows = ledger_rows(fleet.data_dir)
    errored = [r for r in outcomes if r["error"] is not None]
    for r in outcomes:
        if r["error"] is None:  # finished here or, before its first token, on the other replica
            assert r["finish"] in ("stop", "length")
            assert rows[r["id"]]["completion_tokens"] == r["usage"]
        else:  # it had started on the killed replica: ended, billed for what it delivered
            assert r["id"] is not None, f"a request failed before its first token: {r}"
            row = rows[r["id"]]
            assert row["finish_reason"] == "error"
            assert 1 <= r["chunks"] <= row["completion_tokens"] < longest
            assert "engine" in str(r["error"]).lower()
    assert errored, "killing a replica with running streams ended none of them"
    assert open_reservations(fleet.data_dir) == 0

    deadline = time.monotonic() + 240
    while True:
        up = replica_series(fleet, "up").get(victim)
        restarts = replica_series(fleet, "restarts_total").get(victim, 0)
        if up == 1 and restarts >= 1:
            break
        assert time.monotonic() < deadline, "the killed replica did not come back"
        time.sleep(0.5)
    assert replica_pids(fleet)[victim] != pids[victim]
    before = replica_series(fleet, "routed_requests_total")
    words = ("Orange", "Window", "Bridge", "Garden", "Candle", "Forest", "Silver", "Pencil")
    for word in words:
        assert chat(client, f"{word}: say it twice.")["error"] is None
    after = replica_series(fleet, "routed_requests_total")
    assert after[victim] > before[victim], "the restarted replica got no requests"


def test_a_request_whose_replica_dies_before_its_first_token_is_served_by_another(fleet):
    deadline = time.monotonic() + 240
    while set(replica_series(fleet, "up").values()) != {1.0}:
        assert time.monotonic() < deadline, "the replicas are not both up"
        time.sleep(0.5)
    pids = replica_pids(fleet)
    client = fleet.openai("super")
    # A long prompt: its prefill takes seconds on one thread, and no token comes before.
    prompt = "Summarise this list. " + " ".join(f"item{n}" for n in range(900))
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(chat(client, prompt, 8)))
    worker.start()
    deadline = time.monotonic() + 60
    while not any((in_flight := replica_series(fleet, "in_flight_requests")).values()):
        assert time.monotonic() < deadline, "the request never reached a replica"
        time.sleep(0.02)
    victim = max(in_flight, key=lambda k: in_flight[k])
    os.kill(pids[victim], signal.SIGKILL)
    worker.join(300)
    assert result["error"] is None, result
    assert result["finish"] in ("stop", "length") and result["usage"] >= 1
    row = ledger_rows(fleet.data_dir)[result["id"]]
    assert row["completion_tokens"] == result["usage"]
    # Retried before any token: while the replica was taking it, or once it had queued it.
    log = fleet.log()
    assert (f"replica {victim} stopped before {result['id']} started" in log
            or f"engine replica {victim} is down" in log
            and f"{result['id']} goes to another" in log), log
