"""The shipped task set: it loads, no task is solved before the agent works, and each check
can pass (a hand-made solution is judged solved)."""

from __future__ import annotations

import pytest

from tests.agent.sandbox_support import ISOLATION
from tokenfactory.agent.sandbox import CommandRunner, Workspace
from tokenfactory.agent.taskset import TaskFileError, load_tasks, parse_task, select_tasks

pytestmark = pytest.mark.integration  # checks run commands in the sandbox

TASKS = load_tasks()

# What a correct agent would leave behind, written by hand (files to write, files to remove).
SOLUTIONS: dict[str, tuple[dict[str, str], list[str]]] = {
    "append_line": ({"todo.txt": "call mum\nwater the plants\nbuy milk\n"}, []),
    "copy_file": ({"copy.txt": "The quick brown fox jumps over the lazy dog.\n"}, []),
    "count_lines": ({"count.txt": "7\n"}, []),
    "create_file": ({"hello.txt": "Hello, world!"}, []),
    "delete_file": ({}, ["temp.log"]),
    "edit_line": ({"settings.ini": "[app]\nname = demo\ndebug = true\nport = 8080\n"}, []),
    "find_file": ({"answer.txt": "b.txt"}, []),
    "fix_failing_check": ({"calc.py": "def add(a, b):\n    return a + b\n"}, []),
    "nested_file": ({"out/result.txt": "42\n"}, []),
    "rename_file": ({"final.md": "# Plan\n\n- write the report\n- send it\n"}, ["draft.md"]),
    "summarise_file": ({"summary.txt": "Falcon shipped its importer; 1.0 is due this month."},
                       []),
    "sum_numbers": ({"total.txt": "50"}, []),
    "uppercase_copy": ({"upper.txt": "TOKEN FACTORY\n"}, []),
}


def test_at_least_ten_tasks_each_with_a_known_solution():
    assert len(TASKS) >= 10
    assert sorted(t.name for t in TASKS) == sorted(SOLUTIONS)


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_untouched_workspace_is_not_solved_and_the_solution_is(task, tmp_path):
    if any(c.kind == "command_passes" for c in task.checks) and not ISOLATION.available:
        pytest.skip("commands need network isolation")
    ws = Workspace(tmp_path)
    commands = CommandRunner(ws, isolation=ISOLATION)
    task.populate(ws)
    assert task.judge(ws, commands), "a task must not be solved before the agent works"
    writes, removals = SOLUTIONS[task.name]
    for path, content in writes.items():
        ws.write_text(path, content)
    for path in removals:
        ws.resolve(path).unlink()
    assert task.judge(ws, commands) == []


def test_a_wrong_answer_is_not_solved(tmp_path):
    task = {t.name: t for t in TASKS}["summarise_file"]
    ws = Workspace(tmp_path)
    task.populate(ws)
    ws.write_text("summary.txt", (tmp_path / "report.txt").read_text())  # too long
    assert task.judge(ws, CommandRunner(ws, isolation=ISOLATION)) == [
        "summary.txt is longer than 250 characters"
    ]


def test_task_files_are_checked():
    with pytest.raises(TaskFileError, match="unknown check kind"):
        parse_task("x", {"prompt": "p", "checks": [{"kind": "vibes"}]})
    with pytest.raises(TaskFileError, match="missing or bad field"):
        parse_task("x", {"checks": []})
    with pytest.raises(TaskFileError, match="unknown tasks"):
        select_tasks(TASKS, "create_file,nope")
    assert [t.name for t in select_tasks(TASKS, "copy_file,create_file")] == [
        "copy_file", "create_file"
    ]
