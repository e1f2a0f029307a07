"""The tools as the model sees them: results, bounds, and refusals as tool errors."""

from __future__ import annotations

import json
import os

import pytest

from tests.agent.sandbox_support import ISOLATION, needs_isolation
from tokenfactory.agent import tools as tools_mod
from tokenfactory.agent.sandbox import CommandPolicy, CommandRunner, NetworkIsolation, Workspace
from tokenfactory.agent.tools import TOOL_SCHEMAS, ToolBox


@pytest.fixture
def box(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (tmp_path / "secret.txt").write_text("the secret")
    ws = Workspace(root)
    return ToolBox(ws, CommandRunner(ws, CommandPolicy(), ISOLATION))


def call(box: ToolBox, name: str, **args):
    return box.call(name, json.dumps(args))


def test_schemas_are_strict_function_tools():
    for t in TOOL_SCHEMAS:
        params = t["function"]["parameters"]
        assert t["type"] == "function"
        assert params["additionalProperties"] is False
        assert set(params["required"]) == set(params["properties"])


def test_write_read_list(box):
    assert call(box, "write_file", path="d/a.txt", content="héllo\n").text == (
        "wrote 7 bytes to d/a.txt"
    )
    assert call(box, "read_file", path="d/a.txt").text == "héllo\n"
    assert call(box, "list_dir", path=".").text == "d/"
    assert call(box, "list_dir", path="d").text == "a.txt"
    assert call(box, "list_dir", path="").text == "d/"


def test_read_is_bounded(box, monkeypatch):
    monkeypatch.setattr(tools_mod, "MAX_READ_CHARS", 10)
    box.workspace.write_text("big.txt", "x" * 25)
    out = call(box, "read_file", path="big.txt")
    assert out.text == "x" * 10 + "\n[... cut at 10 characters of a 25-byte file]"


def test_refusals_come_back_as_errors(box):
    for name, args in [
        ("read_file", {"path": "../secret.txt"}),
        ("read_file", {"path": "/etc/passwd"}),
        ("write_file", {"path": "../x.txt", "content": "x"}),
        ("list_dir", {"path": ".."}),
        ("search", {"text": "secret", "path": ".."}),
        ("run", {"command": "cat ../secret.txt"}),
        ("run", {"command": "ls | wc"}),
    ]:
        out = call(box, name, **args)
        assert not out.ok and out.text.startswith("error: "), (name, out)
        assert "the secret" not in out.text


def test_search_finds_lines_and_skips_links_out(box, tmp_path):
    ws = box.workspace
    ws.write_text("a.txt", "alpha\nBlue whale\n")
    ws.write_text("sub/b.txt", "a blue sky\n")
    os.symlink(tmp_path / "secret.txt", ws.root / "link.txt")
    os.symlink(tmp_path, ws.root / "linkdir")
    out = call(box, "search", text="blue", path=".")
    assert out.text.splitlines() == ["a.txt:2: Blue whale", "sub/b.txt:1: a blue sky"]
    assert "no line contains" in call(box, "search", text="secret", path=".").text


def test_search_results_are_bounded(box, monkeypatch):
    monkeypatch.setattr(tools_mod, "MAX_SEARCH_RESULTS", 3)
    box.workspace.write_text("many.txt", "hit\n" * 10)
    lines = call(box, "search", text="hit", path=".").text.splitlines()
    assert len(lines) == 4 and lines[-1] == "[stopped at 3 results]"


def test_finish_ends(box):
    out = call(box, "finish", summary="all done")
    assert out.finished and out.text == "all done"


@pytest.mark.integration
@needs_isolation
def test_run_reports_output_and_exit_code(box):
    box.workspace.write_text("t.py", "print('hi')\n")
    out = call(box, "run", command="python3 t.py")
    assert out.ok and out.text == "hi\n[exit code 0]"


def test_run_without_isolation_is_a_clear_error(tmp_path):
    ws = Workspace(tmp_path)
    box = ToolBox(ws, CommandRunner(ws, isolation=NetworkIsolation.unavailable("no unshare")))
    out = call(box, "run", command="ls")
    assert not out.ok and "commands are disabled: no unshare" in out.text


@pytest.mark.integration
@needs_isolation
def test_run_never_outlives_the_wall_time_left(box):
    box.workspace.write_text("sleep.py", "import time\ntime.sleep(30)\n")
    box.time_left = lambda: 1.0
    out = call(box, "run", command="python3 sleep.py")
    assert not out.ok and "killed after the 1 s time limit" in out.text
