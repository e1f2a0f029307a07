"""Commands the model may run: argv lists matched against an allowlist, never a shell.

A rule is a pattern such as `python3 -m pytest ...` or `python3 {py} ...`: literal words, then
`{py}` (one `.py` file inside the workspace) and a final `...` for any further arguments. Every
argument the pattern leaves free is treated as a workspace path: an absolute path or a `..`
part is refused, and so is a name that resolves (through symlinks) outside the workspace.
`python3` is the interpreter running the agent; other programs come from /usr/bin and /bin.
"""

from __future__ import annotations

import os
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tokenfactory.agent.sandbox.errors import SandboxError
from tokenfactory.agent.sandbox.isolation import NetworkIsolation
from tokenfactory.agent.sandbox.workspace import Workspace

DEFAULT_ALLOW = (
    "python3 -m pytest ...",
    "python3 {py} ...",
    "ls ...",
    "cat ...",
    "wc ...",
    "grep ...",
    "head ...",
    "tail ...",
    "diff ...",
    "sort ...",
    "mkdir ...",
    "cp ...",
    "mv ...",
    "rm ...",
)
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
# Characters a shell would interpret: refused, so that nobody believes `a; b` or `a > f` works.
SHELL_CHARS = set(";|&$`<>(){}*?!\\\n")


@dataclass(frozen=True)
class CommandRule:
    words: tuple[str, ...]  # literal words and `{py}` placeholders
    open_ended: bool  # a trailing `...`: further arguments allowed

    @classmethod
    def parse(cls, pattern: str) -> CommandRule:
        words = tuple(pattern.split())
        if not words or words[0] in ("...", "{py}"):
            raise ValueError(f"bad command rule {pattern!r}: start with a program name")
        open_ended = words[-1] == "..."
        return cls(words[:-1] if open_ended else words, open_ended)

    def __str__(self) -> str:
        return " ".join(self.words + (("...",) if self.open_ended else ()))


@dataclass(frozen=True)
class CommandPolicy:
    """Which commands run, for how long, with how much output kept."""

    rules: tuple[CommandRule, ...] = tuple(CommandRule.parse(p) for p in DEFAULT_ALLOW)
    timeout_s: float = 20.0
    max_output_bytes: int = 8_000

    @classmethod
    def from_patterns(cls, patterns: list[str] | tuple[str, ...], **kw) -> CommandPolicy:
        return cls(tuple(CommandRule.parse(p) for p in patterns), **kw)

    def describe(self) -> str:
        return "; ".join(str(r) for r in self.rules)

    def check(self, argv: list[str], workspace: Workspace) -> list[str]:
        """The argv to execute (program resolved), or SandboxError saying why not."""
        if not argv:
            raise SandboxError("empty command")
        for arg in argv:
            bad = sorted(SHELL_CHARS.intersection(arg))
            if bad:
                raise SandboxError(
                    f"argument {arg!r} holds shell characters {''.join(bad)!r}: commands run "
                    "without a shell, one program at a time, no pipes, redirects or globs"
                )
        for rule in self.rules:
            if _matches(rule, argv, workspace):
                return [_program(argv[0]), *argv[1:]]
        raise SandboxError(
            f"command {shlex.join(argv)!r} is not allowed; allowed: {self.describe()}"
        )


def _matches(rule: CommandRule, argv: list[str], workspace: Workspace) -> bool:
    if len(argv) < len(rule.words) or (len(argv) > len(rule.words) and not rule.open_ended):
        return False
    for word, arg in zip(rule.words, argv, strict=False):
        if word == "{py}":
            if not arg.endswith(".py") or arg.startswith("-"):
                return False
            workspace.existing_file(arg)  # refuses a script outside the workspace
        elif word != arg:
            return False
    for arg in argv[len(rule.words):]:
        _check_free_argument(arg, workspace)
    return True


def _check_free_argument(arg: str, workspace: Workspace) -> None:
    """An argument the rule leaves open must not name anything outside the workspace."""
    value = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
    if value.startswith("-") or not value:
        return
    workspace.resolve(value)


def _program(name: str) -> str:
    if name == "python3":
        return sys.executable  # the agent's own interpreter: its packages (pytest) included
    found = shutil.which(name, path=SYSTEM_PATH)
    if found is None:
        raise SandboxError(f"program {name!r} is not installed on this machine")
    return found


@dataclass(frozen=True)
class CommandResult:
    exit_code: int | None  # None: killed at the time limit
    output: str  # stdout and stderr interleaved, at most max_output_bytes
    timed_out: bool
    truncated: bool
    duration_s: float

    def report(self, limit_bytes: int, timeout_s: float) -> str:
        """The text the model reads back."""
        lines = [self.output.rstrip("\n")] if self.output.strip() else ["(no output)"]
        if self.truncated:
            lines.append(f"[output cut at {limit_bytes} bytes; the command was stopped]")
        if self.timed_out:
            lines.append(f"[killed after the {timeout_s:g} s time limit]")
        else:
            lines.append(f"[exit code {self.exit_code}]")
        return "\n".join(lines)


@dataclass
class CommandRunner:
    """Runs allowed commands inside the workspace: no network, clean environment, own process
    group (killed whole at the time or output limit)."""

    workspace: Workspace
    policy: CommandPolicy = field(default_factory=CommandPolicy)
    isolation: NetworkIsolation = field(default_factory=NetworkIsolation.probe)
    clock: Callable[[], float] = time.monotonic

    def run(self, command: str | list[str], timeout_s: float | None = None) -> CommandResult:
        argv = _split(command)
        resolved = self.policy.check(argv, self.workspace)
        if not self.isolation.available:
            raise SandboxError(
                f"commands are disabled: {self.isolation.unavailable_reason}; they would run "
                "with network access"
            )
        limit = self.policy.timeout_s
        if timeout_s is not None:
            limit = min(limit, timeout_s)
        return self._execute([*self.isolation.prefix, *resolved], max(limit, 0.0))

    def _execute(self, argv: list[str], timeout_s: float) -> CommandResult:
        start = self.clock()
        try:
            proc = subprocess.Popen(
                argv,
                cwd=self.workspace.root,
                env=clean_environment(self.workspace),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as one
            )
        except OSError as exc:
            raise SandboxError(f"cannot start {argv[0]!r}: {exc.strerror}") from None
        assert proc.stdout is not None
        limit = self.policy.max_output_bytes
        kept = bytearray()
        timed_out = truncated = False
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while True:
                left = start + timeout_s - self.clock()
                if left <= 0:
                    timed_out = True
                    break
                if not sel.select(timeout=min(left, 0.2)):
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                kept += chunk
                if len(kept) > limit:
                    truncated = True
                    break
        if not (timed_out or truncated):
            # the output closed; the process may still linger (stdout closed, still running)
            try:
                proc.wait(timeout=max(start + timeout_s - self.clock(), 0.0))
            except subprocess.TimeoutExpired:
                timed_out = True
        if timed_out or truncated:
            _kill_group(proc)
        exit_code = None if timed_out else proc.returncode
        proc.stdout.close()
        text = bytes(kept[:limit]).decode("utf-8", errors="replace")
        return CommandResult(exit_code, text, timed_out, truncated, self.clock() - start)


def _split(command: str | list[str]) -> list[str]:
    if isinstance(command, list):
        if not all(isinstance(a, str) for a in command):
            raise SandboxError("a command's arguments must be strings")
        return list(command)
    try:
        return shlex.split(command)
    except ValueError as exc:
        raise SandboxError(f"cannot split the command: {exc}") from None


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def clean_environment(workspace: Workspace) -> dict[str, str]:
    """Nothing of the caller's environment (API keys included) reaches a command."""
    return {
        "PATH": SYSTEM_PATH,
        "HOME": str(workspace.root),
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
    }
