"""The tool loop against a scripted factory: messages, tool results, headers, limits, summary."""

from __future__ import annotations

import json

import pytest

from tests.agent.scripted_factory import ScriptedFactory, call, error, reply
from tokenfactory.agent.loop import AgentLoop, Limits
from tokenfactory.agent.sandbox import CommandRunner, NetworkIsolation, Workspace
from tokenfactory.agent.session import Connection, SessionError, open_session
from tokenfactory.agent.summary import Outcome, StopReason
from tokenfactory.agent.tools import TOOL_NAMES, ToolBox

BASE = "http://127.0.0.1:1"
TASK_ID = "task-test-1"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_loop(factory, tmp_path, limits=Limits(), tier=None, clock=None, sleep=None, **conn):
    session = open_session(
        Connection(BASE, api_key=conn.pop("api_key", "sk-test"), tier=tier, **conn),
        TASK_ID, factory.transport(),
    )
    ws = Workspace(tmp_path)
    commands = CommandRunner(ws, isolation=NetworkIsolation.unavailable("not in this test"))
    kw = {"clock": clock} if clock else {}
    if sleep is not None:
        kw["sleep"] = sleep
    loop = AgentLoop(session.client, ToolBox(ws, commands), session.pricing, session.model,
                     limits, **kw)
    return loop, ws


def test_tool_calls_run_and_their_results_go_back(tmp_path):
    factory = ScriptedFactory([
        reply(call("write_file", "c1", path="hello.txt", content="hi"),
              call("list_dir", "c2", path="."), text="Writing it."),
        reply(call("read_file", "c3", path="nope.txt")),
        reply(call("finish", "c4", summary="wrote hello.txt")),
    ])
    loop, ws = make_loop(factory, tmp_path)
    summary = loop.run("Create hello.txt")

    assert (tmp_path / "hello.txt").read_text() == "hi"
    assert summary.outcome is Outcome.FINISHED and summary.stop_reason is None
    assert summary.detail == "wrote hello.txt"
    bodies = factory.chat_bodies
    assert len(bodies) == 3
    first = bodies[0]
    assert [m["role"] for m in first["messages"]] == ["system", "user"]
    assert first["messages"][1]["content"] == "Create hello.txt"
    assert [t["function"]["name"] for t in first["tools"]] == list(TOOL_NAMES)
    assert first["tool_choice"] == "required"
    assert first["model"] == "scripted"
    second = bodies[1]["messages"]
    assert second[2]["role"] == "assistant"
    assert [c["id"] for c in second[2]["tool_calls"]] == ["c1", "c2"]
    assert second[3] == {"role": "tool", "tool_call_id": "c1",
                         "content": "wrote 2 bytes to hello.txt"}
    assert second[4]["tool_call_id"] == "c2" and "hello.txt" in second[4]["content"]
    third = bodies[2]["messages"]
    assert third[-1]["tool_call_id"] == "c3"
    assert third[-1]["content"].startswith("error: 'nope.txt' does not exist")
    assert summary.totals.tool_calls == 4 and summary.totals.tool_errors == 1


def test_every_request_carries_the_task_id_and_one_cache_key(tmp_path):
    factory = ScriptedFactory([reply(call("list_dir", path=".")),
                               reply(call("finish", summary="done"))])
    loop, _ = make_loop(factory, tmp_path, tier="super")
    summary = loop.run("look")
    assert summary.task_id == TASK_ID
    assert factory.requests and all(r.headers["X-Task-Id"] == TASK_ID for r in factory.requests)
    chats = [r for r in factory.requests if r.url.path == "/v1/chat/completions"]
    assert all(r.headers["Authorization"] == "Bearer sk-test" for r in chats)
    keys = {b["prompt_cache_key"] for b in factory.chat_bodies}
    assert keys == {f"agent-{TASK_ID}"}
    assert {b["service_tier"] for b in factory.chat_bodies} == {"super"}


def test_tokens_and_cost_follow_usage_cached_price_and_served_tier(tmp_path):
    factory = ScriptedFactory([
        # standard: 1000 uncached at $1/M + 500 cached at $0.1/M + 100 out at $2/M = 1250 u$
        reply(call("list_dir", path="."), prompt=1500, cached=500, completion=100),
        # served at super (10x): 200 uncached + 800 cached + 10 out = 2000+800+200 = 3000 u$
        reply(call("finish", summary="ok"), prompt=1000, cached=800, completion=10,
              tier="super"),
    ])
    loop, _ = make_loop(factory, tmp_path)
    s = loop.run("x")
    t = s.totals
    assert (t.steps, t.prompt_tokens, t.cached_tokens, t.completion_tokens) == (2, 2500, 1300, 110)
    assert t.cost_micro_usd == 1250 + 3000
    assert s.tier == "super"
    d = s.to_dict()
    assert d["totals"]["cost_usd"] == pytest.approx(0.00425)
    assert d["outcome"] == "finished" and d["task_id"] == TASK_ID
    json.dumps(d)


def test_a_reply_without_a_tool_call_ends_the_run(tmp_path):
    factory = ScriptedFactory([reply(text="I cannot do that.")])
    loop, _ = make_loop(factory, tmp_path)
    s = loop.run("x")
    assert s.outcome is Outcome.ANSWERED and s.detail == "I cannot do that."


def test_step_limit_stops_the_run(tmp_path):
    factory = ScriptedFactory([reply(call("list_dir", path="."))])
    loop, _ = make_loop(factory, tmp_path, Limits(max_steps=3))
    s = loop.run("x")
    assert s.outcome is Outcome.STOPPED and s.stop_reason is StopReason.STEPS
    assert len(factory.chat_bodies) == 3 and s.totals.steps == 3
    assert s.headline() == "stopped: step limit"


def test_budget_stops_before_a_request_that_could_overrun_it(tmp_path):
    # each step: 100k prompt tokens at $1/M = 100_000 u$ + 10 out = 100_020 u$
    factory = ScriptedFactory([reply(call("list_dir", path="."), prompt=100_000)])
    budget = 350_000
    loop, _ = make_loop(factory, tmp_path, Limits(max_steps=50, budget_micro_usd=budget))
    s = loop.run("x")
    assert s.stop_reason is StopReason.BUDGET
    assert s.totals.cost_micro_usd <= budget
    assert len(factory.chat_bodies) == 3
    assert "the next request could cost up to" in s.detail


def test_zero_budget_sends_nothing(tmp_path):
    factory = ScriptedFactory([reply(call("list_dir", path="."))])
    loop, _ = make_loop(factory, tmp_path, Limits(budget_micro_usd=0))
    s = loop.run("x")
    assert s.stop_reason is StopReason.BUDGET and factory.chat_bodies == []


def test_wall_time_limit_stops_the_run(tmp_path):
    clock = FakeClock()

    def slow_request() -> None:
        clock.now += 40.0

    factory = ScriptedFactory([reply(call("list_dir", path="."))], on_chat=slow_request)
    loop, _ = make_loop(factory, tmp_path, Limits(max_steps=50, max_wall_s=100), clock=clock)
    s = loop.run("x")
    assert s.stop_reason is StopReason.WALL_TIME
    assert len(factory.chat_bodies) == 3
    assert s.wall_s == pytest.approx(120.0)


def test_a_factory_error_stops_the_run_with_its_message(tmp_path):
    factory = ScriptedFactory([reply(call("list_dir", path=".")),
                               error(400, "tools[0] is malformed", "tools")])
    loop, _ = make_loop(factory, tmp_path)
    s = loop.run("x")
    assert s.stop_reason is StopReason.ERROR
    assert "400" in s.detail and "tools[0] is malformed (param tools)" in s.detail
    assert s.totals.steps == 1


def test_bad_arguments_and_unknown_tools_come_back_as_tool_errors(tmp_path):
    bad_json = {"id": "b1", "type": "function",
                "function": {"name": "write_file", "arguments": "{not json"}}
    factory = ScriptedFactory([
        reply(bad_json, call("delete_everything", "b2"), call("read_file", "b3", wrong=1)),
        reply(call("finish", summary="gave up")),
    ])
    loop, _ = make_loop(factory, tmp_path)
    s = loop.run("x")
    results = [m for m in factory.chat_bodies[1]["messages"] if m["role"] == "tool"]
    assert results[0]["content"].startswith("error: the arguments are not valid JSON")
    assert results[1]["content"].startswith("error: no tool 'delete_everything'")
    assert results[2]["content"].startswith("error: bad arguments for read_file")
    assert s.outcome is Outcome.FINISHED and s.totals.tool_errors == 3


def test_cut_reply_is_reported_as_such(tmp_path):
    factory = ScriptedFactory([reply(text="I will now", finish_reason="length")])
    loop, _ = make_loop(factory, tmp_path)
    s = loop.run("x")
    assert s.stop_reason is StopReason.LENGTH


def test_endpoint_without_prices_needs_them_given(tmp_path):
    factory = ScriptedFactory([reply(call("finish", summary="ok"))], publish_tiers=False)
    with pytest.raises(SessionError, match="--prices"):
        make_loop(factory, tmp_path)
    loop, _ = make_loop(factory, tmp_path, prices="1:0.1:2")
    assert loop.run("x").totals.cost_micro_usd == 100 + 20


def test_local_keys_file_gives_the_key_of_the_tier(tmp_path, monkeypatch):
    keys = tmp_path / "local-keys.json"
    keys.write_text(json.dumps({"standard": "sk-standard", "super": "sk-super"}))
    monkeypatch.setattr("tokenfactory.bench.serve.tiers_info.DEFAULT_KEYS_FILE", keys)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    ws_dir = tmp_path / "ws"
    ws_dir.mkdir()
    factory = ScriptedFactory([reply(call("finish", summary="ok"))])
    loop, _ = make_loop(factory, ws_dir, tier="super", api_key=None)
    loop.run("x")
    chat = [r for r in factory.requests if r.url.path == "/v1/chat/completions"][0]
    assert chat.headers["Authorization"] == "Bearer sk-super"


def test_a_busy_factory_is_asked_again_after_its_retry_after(tmp_path):
    waits: list[float] = []
    factory = ScriptedFactory([
        error(503, "overloaded, shed", retry_after="2"),
        error(429, "rate limited", retry_after="1"),
        reply(call("finish", summary="done")),
    ])
    loop, _ = make_loop(factory, tmp_path, sleep=waits.append)
    s = loop.run("x")
    assert s.outcome is Outcome.FINISHED and waits == [2.0, 1.0]
    assert s.totals.steps == 1 and len(factory.chat_bodies) == 3


def test_no_retry_without_retry_after_or_past_the_wall_time(tmp_path):
    waits: list[float] = []
    factory = ScriptedFactory([error(429, "budget spent")])
    loop, _ = make_loop(factory, tmp_path, sleep=waits.append)
    assert loop.run("x").stop_reason is StopReason.ERROR and waits == []
    factory = ScriptedFactory([error(503, "busy", retry_after="900")])
    loop, _ = make_loop(factory, tmp_path, Limits(max_wall_s=60), sleep=waits.append)
    s = loop.run("x")
    assert s.stop_reason is StopReason.ERROR and "busy" in s.detail and waits == []
    factory = ScriptedFactory([error(503, "busy", retry_after="0")])
    loop, _ = make_loop(factory, tmp_path, sleep=waits.append)
    assert loop.run("x").stop_reason is StopReason.ERROR
    assert waits == [0.0, 0.0, 0.0] and len(factory.chat_bodies) == 4
