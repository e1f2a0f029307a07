"""`serve --async-scheduling` through a real factory process and the official openai SDK: the
same text as steps one at a time, streamed or not, usage and ledger exact, and a client that
leaves mid-stream billed for what it was sent."""

from __future__ import annotations

import time

import pytest

from tests.server.conftest import (
    MODEL,
    assert_same_chat,
    ledger_rows,
    open_reservations,
    start_server,
)

pytestmark = pytest.mark.slow

MSG = [{"role": "user", "content": "Write three sentences about rivers."}]


@pytest.fixture(scope="module")
def async_server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("async"), "--async-scheduling")
    yield server
    server.stop()


def test_same_text_stream_and_usage(async_server, plain_server):
    kw = dict(model=MODEL, messages=MSG, max_tokens=60, temperature=0)
    assert_same_chat(async_server, plain_server, "standard", **kw)
    assert_same_chat(async_server, plain_server, "standard", **kw, stop=["."])
    # A grammar's masks are made once the step in flight has advanced it.
    json_kw = dict(kw, messages=[{"role": "user", "content": "A JSON object about rivers."}])
    assert_same_chat(
        async_server, plain_server, "standard", **json_kw, response_format={"type": "json_object"}
    )


def test_a_client_leaving_mid_stream_is_billed_what_it_was_sent(async_server):
    client = async_server.openai("standard")
    stream = client.chat.completions.create(
        model=MODEL, messages=MSG, max_tokens=400, stream=True, extra_body={"ignore_eos": True}
    )
    seen = 0
    rid = None
    for chunk in stream:
        rid = chunk.id
        seen += 1
        if seen == 6:
            break
    stream.close()
    deadline = time.monotonic() + 30
    while rid not in ledger_rows(async_server.data_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    row = ledger_rows(async_server.data_dir)[rid]
    assert row["finish_reason"] == "disconnected"
    assert seen - 1 <= row["completion_tokens"] < 400  # the first chunk carries the role
    assert open_reservations(async_server.data_dir) == 0
