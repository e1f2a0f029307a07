"""Task ids against a real server process with the embedded model: stored in the ledger from
the header or the body's metadata, reported by /v1/usage?by=task, held to a key's budget per
task. One server for the module."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.server.conftest import MODEL, ServerProcess, ledger_rows, start_server
from tokenfactory.billing import Billing
from tokenfactory.tiers import load_tiers

pytestmark = pytest.mark.slow

MSG = [{"role": "user", "content": "Say hi"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    s = start_server(tmp_path_factory.mktemp("tasks"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def budget_key(server: ServerProcess) -> str:
    """A high-tier key whose tasks may each spend 200 micro-dollars."""
    with Billing.open(load_tiers(), data_dir=server.data_dir, progress_interval_s=0) as b:
        _, raw = b.create_key("agent", "high", task_budget_micro_usd=200)
    return raw


def post(server, body, key: str, headers=None, path="/v1/chat/completions") -> httpx.Response:
    h = {"Authorization": f"Bearer {key}", **(headers or {})}
    return httpx.post(server.base_url + path, json=body, headers=h, timeout=120)


def chat(max_tokens: int = 3, **extra) -> dict:
    return {"model": MODEL, "messages": MSG, "max_tokens": max_tokens, **extra}


def test_the_task_id_reaches_the_ledger_from_header_or_metadata(server):
    key = server.keys["super"]
    r1 = post(server, chat(), key, {"X-Task-Id": "run-header"})
    r2 = post(server, chat(metadata={"task_id": "run-body", "team": "x"}), key)
    r3 = post(server, {"model": MODEL, "prompt": "Hi", "max_tokens": 2,
                       "metadata": {"task_id": "run-body"}}, key, path="/v1/completions")
    r4 = post(server, chat(metadata={"task_id": "same"}), key, {"X-Task-Id": "same"})
    for r in (r1, r2, r3, r4):
        assert r.status_code == 200, r.text
    streamed = server.openai("super").chat.completions.create(
        model=MODEL, messages=MSG, max_tokens=3, stream=True,
        extra_headers={"X-Task-Id": "run-stream"},
    )
    stream_id = {chunk.id for chunk in streamed}.pop()
    deadline = time.monotonic() + 10  # a stream is settled as it closes
    while stream_id not in (rows := ledger_rows(server.data_dir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rows[stream_id]["task_id"] == "run-stream"
    assert rows[r1.json()["id"]]["task_id"] == "run-header"
    assert rows[r2.json()["id"]]["task_id"] == "run-body"
    assert rows[r3.json()["id"]]["task_id"] == "run-body"
    assert rows[r4.json()["id"]]["task_id"] == "same"

    usage = httpx.get(server.base_url + "/v1/usage", params={"by": "task"},
                      headers={"Authorization": f"Bearer {key}"}, timeout=30).json()
    by_task = {row["task_id"]: row for row in usage["data"]}
    assert by_task["run-body"]["requests"] == 2 and by_task["run-header"]["requests"] == 1
    assert usage["total_micro_usd"] == sum(row["amount_micro_usd"] for row in usage["data"])


@pytest.mark.parametrize(
    "body,headers,param",
    [
        (chat(metadata={"task_id": "a"}), {"X-Task-Id": "b"}, "metadata.task_id"),
        (chat(), {"X-Task-Id": "x" * 129}, "X-Task-Id"),
        (chat(metadata={"task_id": "tab\there"}), {}, "metadata.task_id"),
        (chat(metadata={f"k{i}": "v" for i in range(17)}), {}, "metadata"),
        (chat(metadata={"task_id": 7}), {}, "metadata.task_id"),
    ],
)
def test_bad_task_ids_are_400_naming_the_parameter(server, body, headers, param):
    before = len(ledger_rows(server.data_dir))
    r = post(server, body, server.keys["super"], headers)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error"
    assert len(ledger_rows(server.data_dir)) == before  # refused before anything was reserved


def test_usage_by_an_unknown_grouping_is_400(server):
    r = httpx.get(server.base_url + "/v1/usage", params={"by": "planet"},
                  headers={"Authorization": f"Bearer {server.keys['super']}"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "by"


def test_a_task_past_its_budget_is_refused_and_others_go_on(server, budget_key):
    # high: $6/Mtok out, so max_tokens 10 reserves ~110 micro-dollars and 30 reserves ~230
    ok = post(server, chat(max_tokens=10), budget_key, {"X-Task-Id": "small"})
    assert ok.status_code == 200, ok.text
    refused = post(server, chat(max_tokens=30), budget_key, {"X-Task-Id": "small"})
    assert refused.status_code == 429, refused.text
    err = refused.json()["error"]
    assert err["code"] == "insufficient_quota" and "'small'" in err["message"]
    assert post(server, chat(max_tokens=10), budget_key, {"X-Task-Id": "other"}).status_code == 200
    assert post(server, chat(max_tokens=30), budget_key).status_code == 200  # no task: no cap
