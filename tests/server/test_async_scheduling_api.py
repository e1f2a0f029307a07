"""`serve --async-scheduling` through a real factory process and the official openai SDK: the
same text as steps one at a time, streamed or not, usage and ledger exact, and a client that
leaves mid-stream billed for what it was sent."""

from __future__ import annotations

import time

import pytest

from tests.server.conftest import MODEL, ledger_rows, open_reservations, start_server

pytestmark = pytest.mark.slow

MSG = [{"role": "user", "content": "Write three sentences about rivers."}]


@pytest.fixture(scope="module")
def async_server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("async"), "--async-scheduling")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory):
    """The same server with steps one at a time; both get the same requests in the same order,
    so their prefix caches hold the same blocks (a cache hit rounds a prompt's tail in a span
    of another length)."""
    server = start_server(tmp_path_factory.mktemp("plain"))
    yield server
    server.stop()


def test_same_text_stream_and_usage(async_server, plain_server):
    kw = dict(model=MODEL, messages=MSG, max_tokens=60, temperature=0)
    plain = plain_server.openai("standard").chat.completions.create(**kw)
    client = async_server.openai("standard")
    whole = client.chat.completions.create(**kw)
    assert whole.choices[0].message.content == plain.choices[0].message.content
    assert whole.usage.completion_tokens == plain.usage.completion_tokens
    assert whole.choices[0].finish_reason == plain.choices[0].finish_reason

    stream = dict(kw, stream=True, stream_options={"include_usage": True}, stop=["."])
    plain_chunks = list(plain_server.openai("standard").chat.completions.create(**stream))
    chunks = list(client.chat.completions.create(**stream))

    def text(chunks: list) -> str:
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    assert text(chunks) == text(plain_chunks)
    assert "." not in text(chunks)
    assert chunks[-1].usage.completion_tokens == plain_chunks[-1].usage.completion_tokens
    rows = ledger_rows(async_server.data_dir)
    assert rows[whole.id]["completion_tokens"] == whole.usage.completion_tokens
    assert rows[chunks[0].id]["completion_tokens"] == chunks[-1].usage.completion_tokens


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
