"""`tokenfactory agent` and `agent eval` end to end against a scripted factory over HTTP."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.agent.scripted_factory import ScriptedFactory, call, reply, serving
from tokenfactory.cli import app

pytestmark = pytest.mark.integration  # the command line against an HTTP server on a loopback port


def test_agent_run_prints_steps_and_writes_the_summary(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    factory = ScriptedFactory([
        reply(call("write_file", path="hello.txt", content="Hello"), text="On it.",
              prompt=400, cached=100, completion=20),
        reply(call("finish", summary="created hello.txt"), prompt=450, cached=400),
    ])
    out = tmp_path / "summary.json"
    with serving(factory) as base:
        result = CliRunner().invoke(app, [
            "agent", "Create hello.txt", "--workspace", str(ws), "--base-url", base,
            "--api-key", "sk-x", "--task-id", "task-cli-1", "--json", str(out),
        ])
    assert result.exit_code == 0, result.output
    text = result.output
    for expected in ("step 1", "model: On it.", "call write_file", "wrote 5 bytes to hello.txt",
                     "step 2", "call finish", "finished", "task-cli-1", "850 prompt (500 cached)"):
        assert expected in text, expected
    assert (ws / "hello.txt").read_text() == "Hello"
    summary = json.loads(out.read_text())
    assert summary["task_id"] == "task-cli-1" and summary["outcome"] == "finished"
    assert summary["totals"]["steps"] == 2 and summary["totals"]["cached_tokens"] == 500
    # 300 in at $1/M + 100 cached at $0.1/M + 20 out at $2/M, then 50 + 400 cached + 10 out
    assert summary["totals"]["cost_micro_usd"] == (300 + 10 + 40) + (50 + 40 + 20)
    assert {r.headers["X-Task-Id"] for r in factory.requests} == {"task-cli-1"}
    assert summary["factory_bill"] == {
        "requests": 2, "prompt_tokens": 850, "cached_tokens": 500, "completion_tokens": 30,
        "amount_micro_usd": summary["totals"]["cost_micro_usd"],
    }
    assert "factory billed" in text and "matches" in text


def test_a_factory_bill_beyond_what_the_runner_saw_is_flagged(tmp_path):
    factory = ScriptedFactory([reply(call("finish", summary="ok"))], extra_billed=77)
    out = tmp_path / "summary.json"
    with serving(factory) as base:
        result = CliRunner().invoke(app, [
            "agent", "x", "--workspace", str(tmp_path), "--base-url", base, "--api-key", "sk-x",
            "--json", str(out),
        ], env={"COLUMNS": "200"})
    summary = json.loads(out.read_text())
    assert summary["factory_bill"]["amount_micro_usd"] == summary["totals"]["cost_micro_usd"] + 77
    assert "differs" in result.output


def test_no_factory_bill_where_the_endpoint_keeps_none(tmp_path):
    factory = ScriptedFactory([reply(call("finish", summary="ok"))], publish_usage=False)
    out = tmp_path / "summary.json"
    with serving(factory) as base:
        result = CliRunner().invoke(app, [
            "agent", "x", "--workspace", str(tmp_path), "--base-url", base, "--api-key", "sk-x",
            "--json", str(out),
        ])
    assert result.exit_code == 0
    assert json.loads(out.read_text())["factory_bill"] is None
    assert "factory billed" not in result.output


def test_agent_run_exits_nonzero_when_a_limit_stops_it(tmp_path):
    factory = ScriptedFactory([reply(call("list_dir", path="."))])
    with serving(factory) as base:
        result = CliRunner().invoke(app, [
            "agent", "run", "loop forever", "--workspace", str(tmp_path), "--base-url", base,
            "--api-key", "sk-x", "--max-steps", "2",
        ])
    assert result.exit_code == 1
    assert "stopped: step limit" in result.output


def test_agent_run_refuses_a_missing_workspace(tmp_path):
    result = CliRunner().invoke(app, ["agent", "x", "--workspace", str(tmp_path / "nope")],
                                env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert "is not a directory" in result.output


def test_agent_eval_reports_by_tier(tmp_path):
    # The script is served once across the whole eval: the standard run gets the write and
    # solves create_file; the super run gets only `finish` and leaves nothing behind.
    factory = ScriptedFactory([
        reply(call("write_file", path="hello.txt", content="Hello, world!")),
        reply(call("finish", summary="done")),
    ])
    out = tmp_path / "eval.json"
    with serving(factory) as base:
        result = CliRunner().invoke(app, [
            "agent", "eval", "--tiers", "standard,super", "--tasks", "create_file",
            "--base-url", base, "--api-key", "sk-x", "--json", str(out),
            "--transcripts", str(tmp_path / "runs"),
        ])
    assert result.exit_code == 0, result.output
    assert "agent tasks by tier" in result.output
    doc = json.loads(out.read_text())
    assert [(t["tier"], t["solved"], t["share_solved"]) for t in doc["tiers"]] == [
        ("standard", 1, 1.0), ("super", 0, 0.0)
    ]
    standard, super_ = doc["results"]
    assert standard["solved"] and standard["steps"] == 2 and standard["problems"] == []
    assert not super_["solved"] and super_["problems"] == ["hello.txt does not exist"]
    assert standard["task_id"] != super_["task_id"]
    tiers_sent = [b.get("service_tier") for b in factory.chat_bodies]
    assert tiers_sent == ["standard", "standard", "super"]
    assert doc["commit"] and doc["command"] == "tokenfactory agent eval"
    assert standard["factory_billed_micro_usd"] == standard["cost_micro_usd"]
    transcript = json.loads((tmp_path / "runs" / "create_file-super.json").read_text())
    assert transcript["problems"] == ["hello.txt does not exist"]
    assert [m["role"] for m in transcript["messages"]] == ["system", "user", "assistant"]
    assert transcript["summary"]["task_id"] == super_["task_id"]


def test_agent_eval_runs_concurrently_in_task_order(tmp_path):
    factory = ScriptedFactory([reply(call("finish", summary="nothing done"))])
    out = tmp_path / "eval.json"
    with serving(factory) as base:
        result = CliRunner().invoke(app, [
            "agent", "eval", "--tiers", "standard,super", "--tasks", "create_file,copy_file",
            "--base-url", base, "--api-key", "sk-x", "--concurrency", "3", "--json", str(out),
        ])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert [(r["task"], r["tier"]) for r in doc["results"]] == [
        ("create_file", "standard"), ("create_file", "super"),
        ("copy_file", "standard"), ("copy_file", "super"),
    ]
    assert not any(r["solved"] for r in doc["results"])
    assert len({r["task_id"] for r in doc["results"]}) == 4


def test_tier_keys_file_gives_each_tier_its_own_key(tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"standard": "sk-standard", "super": "sk-super"}))
    factory = ScriptedFactory([reply(call("finish", summary="ok"))])
    with serving(factory) as base:
        result = CliRunner().invoke(app, [
            "agent", "eval", "--tiers", "standard,super", "--tasks", "create_file",
            "--base-url", base, "--tier-keys", str(keys),
        ])
    assert result.exit_code == 0, result.output
    chats = [r for r in factory.requests if r.url.path == "/v1/chat/completions"]
    assert [r.headers["Authorization"] for r in chats] == ["Bearer sk-standard", "Bearer sk-super"]


def test_unreadable_tier_keys_file_is_a_clear_error(tmp_path):
    factory = ScriptedFactory([reply(call("finish", summary="ok"))])
    with serving(factory) as base:
        result = CliRunner().invoke(app, [
            "agent", "x", "--workspace", str(tmp_path), "--base-url", base,
            "--tier-keys", str(tmp_path / "missing.json"),
        ], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert "cannot read tier keys" in result.output
