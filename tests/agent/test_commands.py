"""Commands: allowlist, no shell, no paths out, no network, time and output limits, clean env."""

from __future__ import annotations

import os
import textwrap

import pytest

from tests.agent.sandbox_support import ISOLATION, needs_isolation
from tokenfactory.agent.sandbox import (
    CommandPolicy,
    CommandRunner,
    NetworkIsolation,
    SandboxError,
    Workspace,
)

pytestmark = pytest.mark.integration  # real processes under unshare, on the wall clock



@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (tmp_path / "secret.txt").write_text("secret")
    return Workspace(root)


def runner(ws: Workspace, **policy) -> CommandRunner:
    return CommandRunner(ws, CommandPolicy(**policy), ISOLATION)


def script(ws: Workspace, name: str, body: str) -> None:
    ws.write_text(name, textwrap.dedent(body))


@pytest.mark.parametrize(
    "command",
    ["bash -c ls", "sh x.sh", "curl http://example.com", "python3 -c pass", "rmdir x",
     "python3", "python3 -m http.server", "env"],
)
def test_commands_off_the_allowlist_are_refused(ws, command):
    with pytest.raises(SandboxError, match="is not allowed"):
        runner(ws).run(command)


@pytest.mark.parametrize(
    "command",
    ["ls; rm -rf .", "cat a | wc", "ls && ls", "echo $HOME", "cat `x`", "ls > out.txt",
     "ls *.txt", "cat $(whoami)"],
)
def test_shell_metacharacters_are_refused(ws, command):
    with pytest.raises(SandboxError, match="shell characters"):
        runner(ws).run(command)


@pytest.mark.parametrize(
    "command", ["cat /etc/passwd", "cat ../secret.txt", "ls --color=/x", "cp a.txt ../b.txt"]
)
def test_arguments_naming_paths_outside_are_refused(ws, command):
    ws.write_text("a.txt", "a")
    with pytest.raises(SandboxError):
        runner(ws).run(command)


def test_script_outside_the_workspace_is_refused(ws, tmp_path):
    (tmp_path / "evil.py").write_text("print('x')")
    os.symlink(tmp_path / "evil.py", ws.root / "evil.py")
    with pytest.raises(SandboxError, match="outside the workspace"):
        runner(ws).run("python3 evil.py")


def test_without_isolation_commands_are_refused_not_run(ws):
    script(ws, "touch.py", "open('ran.txt', 'w').write('x')\n")
    r = CommandRunner(ws, CommandPolicy(), NetworkIsolation.unavailable("no namespaces here"))
    with pytest.raises(SandboxError, match="commands are disabled: no namespaces here"):
        r.run("python3 touch.py")
    assert not (ws.root / "ran.txt").exists()


@needs_isolation
def test_an_allowed_command_runs_in_the_workspace(ws):
    ws.write_text("a.txt", "one\ntwo\n")
    result = runner(ws).run("wc -l a.txt")
    assert result.exit_code == 0
    assert result.output.split() == ["2", "a.txt"]
    assert not result.truncated and not result.timed_out


@needs_isolation
def test_python_script_and_exit_code(ws):
    script(ws, "fail.py", "import sys\nprint('bad')\nsys.exit(3)\n")
    result = runner(ws).run(["python3", "fail.py"])
    assert result.exit_code == 3
    assert "bad" in result.output
    assert "[exit code 3]" in result.report(8000, 20)


@needs_isolation
def test_commands_have_no_network(ws):
    script(ws, "net.py", """\
        import socket
        s = socket.socket()
        s.settimeout(3)
        try:
            s.connect(("1.1.1.1", 80))
            print("CONNECTED")
        except OSError as exc:
            print("refused", exc.errno)
        """)
    result = runner(ws).run("python3 net.py")
    assert "refused" in result.output, result.output
    assert "CONNECTED" not in result.output


@needs_isolation
def test_runaway_output_is_cut_and_the_process_stopped(ws):
    script(ws, "spam.py", "while True:\n    print('x' * 100)\n")
    result = runner(ws, max_output_bytes=1000, timeout_s=20).run("python3 spam.py")
    assert result.truncated
    assert len(result.output) == 1000
    assert result.duration_s < 10
    assert "output cut at 1000 bytes" in result.report(1000, 20)


@needs_isolation
def test_timeout_kills_the_whole_process_group(ws):
    script(ws, "hang.py", """\
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print("started", flush=True)
        time.sleep(60)
        """)
    result = runner(ws, timeout_s=1.5).run("python3 hang.py")
    assert result.timed_out
    assert result.exit_code is None
    assert result.duration_s < 10
    assert "killed after the 1.5 s time limit" in result.report(8000, 1.5)


@needs_isolation
def test_a_closed_output_does_not_outlive_the_time_limit(ws):
    script(ws, "quiet.py", "import os, time\nos.close(1)\nos.close(2)\ntime.sleep(60)\n")
    result = runner(ws, timeout_s=1.0).run("python3 quiet.py")
    assert result.timed_out


@needs_isolation
def test_environment_is_clean(ws, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-should-not-leak")
    script(ws, "env.py", "import os\nprint(sorted(os.environ))\n")
    result = runner(ws).run("python3 env.py")
    assert "OPENAI_API_KEY" not in result.output
    assert "PATH" in result.output


def test_custom_allowlist_patterns():
    policy = CommandPolicy.from_patterns(["make test", "echo ..."])
    assert policy.describe() == "make test; echo ..."
    with pytest.raises(ValueError, match="start with a program name"):
        CommandPolicy.from_patterns(["... x"])


def test_exact_pattern_takes_no_extra_arguments(tmp_path):
    ws = Workspace(tmp_path)
    policy = CommandPolicy.from_patterns(["ls"])
    assert policy.check(["ls"], ws)[0].endswith("/ls")
    with pytest.raises(SandboxError, match="is not allowed"):
        policy.check(["ls", "-la"], ws)
