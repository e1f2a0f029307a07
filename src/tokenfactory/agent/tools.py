"""The tools the model is given, their JSON schemas, and their execution in the sandbox.

Each call returns a `ToolOutcome`: the text the model reads back (an error is a result too,
so the model can correct itself) and whether the call ended the run (`finish`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from tokenfactory.agent.sandbox import CommandRunner, SandboxError, Workspace

MAX_READ_CHARS = 12_000
MAX_WRITE_CHARS = 200_000
MAX_LIST_ENTRIES = 200
MAX_SEARCH_RESULTS = 40
MAX_SEARCH_FILE_BYTES = 1_000_000
MAX_SEARCH_FILES = 2_000


def _tool(name: str, description: str, properties: dict, required: list[str]) -> dict:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": False,
            },
        },
    }


_PATH = {"type": "string", "description": "path relative to the workspace"}

TOOL_SCHEMAS: tuple[dict, ...] = (
    _tool("read_file", "Read a text file of the workspace.", {"path": _PATH}, ["path"]),
    _tool(
        "write_file",
        "Create or overwrite a text file of the workspace with the given content.",
        {"path": _PATH, "content": {"type": "string"}},
        ["path", "content"],
    ),
    _tool("list_dir", "List a directory of the workspace.", {"path": _PATH}, ["path"]),
    _tool(
        "search",
        "Find lines containing a text (case-insensitive) in the workspace's files.",
        {"text": {"type": "string"}, "path": _PATH},
        ["text", "path"],
    ),
    _tool(
        "run",
        "Run one allowed command in the workspace (no shell), e.g. python3 test_x.py.",
        {"command": {"type": "string"}},
        ["command"],
    ),
    _tool(
        "finish",
        "Say the task is done, with a short summary of what was done.",
        {"summary": {"type": "string"}},
        ["summary"],
    ),
)
TOOL_NAMES = tuple(t["function"]["name"] for t in TOOL_SCHEMAS)


@dataclass(frozen=True)
class ToolOutcome:
    text: str  # what the model reads back (for `finish`: its summary)
    ok: bool  # False: the call was refused or failed (the text says why)
    finished: bool = False  # the model called `finish`


class ToolBox:
    """Executes the model's tool calls against one workspace."""

    def __init__(
        self,
        workspace: Workspace,
        commands: CommandRunner,
        time_left: Callable[[], float] | None = None,
    ) -> None:
        self.workspace = workspace
        self.commands = commands
        self.time_left = time_left  # a command never outlives the run's wall-time limit

    def call(self, name: str, arguments: str) -> ToolOutcome:
        try:
            args = json.loads(arguments or "{}")
        except json.JSONDecodeError as exc:
            return ToolOutcome(f"error: the arguments are not valid JSON ({exc.msg})", False)
        if not isinstance(args, dict):
            return ToolOutcome("error: the arguments must be a JSON object", False)
        handler = getattr(self, f"_{name}", None) if name in TOOL_NAMES else None
        if handler is None:
            return ToolOutcome(f"error: no tool {name!r}; tools: {', '.join(TOOL_NAMES)}", False)
        try:
            return handler(**args)
        except TypeError:
            return ToolOutcome(f"error: bad arguments for {name}: {sorted(args)}", False)
        except SandboxError as exc:
            return ToolOutcome(f"error: {exc}", False)
        except (OSError, UnicodeDecodeError) as exc:
            return ToolOutcome(f"error: {name} failed: {exc}", False)

    # -- the tools --------------------------------------------------------------------------

    def _read_file(self, path: str) -> ToolOutcome:
        file = self.workspace.existing_file(path)
        size = file.stat().st_size
        with open(file, encoding="utf-8", errors="replace") as f:
            text = f.read(MAX_READ_CHARS + 1)  # never the whole of a huge file
        if len(text) > MAX_READ_CHARS:
            text = text[:MAX_READ_CHARS] + (
                f"\n[... cut at {MAX_READ_CHARS} characters of a {size}-byte file]"
            )
        return ToolOutcome(text, True)

    def _write_file(self, path: str, content: str) -> ToolOutcome:
        if not isinstance(content, str):
            raise SandboxError("content must be a string")
        if len(content) > MAX_WRITE_CHARS:
            raise SandboxError(f"content is longer than {MAX_WRITE_CHARS} characters")
        written = self.workspace.write_text(path, content)
        rel = self.workspace.relative(written)
        return ToolOutcome(f"wrote {len(content.encode())} bytes to {rel}", True)

    def _list_dir(self, path: str = ".") -> ToolOutcome:
        directory = self.workspace.existing_dir(path)
        entries = sorted(directory.iterdir(), key=lambda p: p.name)
        lines = [p.name + ("/" if p.is_dir() else "") for p in entries[:MAX_LIST_ENTRIES]]
        if len(entries) > MAX_LIST_ENTRIES:
            lines.append(f"[... {len(entries) - MAX_LIST_ENTRIES} more entries]")
        return ToolOutcome("\n".join(lines) if lines else "(empty directory)", True)

    def _search(self, text: str, path: str = ".") -> ToolOutcome:
        if not isinstance(text, str) or not text:
            raise SandboxError("search text must be a non-empty string")
        start = self.workspace.resolve(path)
        needle = text.lower()
        files = [start] if start.is_file() else sorted(p for p in start.rglob("*") if p.is_file())
        hits: list[str] = []
        for f in files[:MAX_SEARCH_FILES]:
            # rglob may walk into a symlinked directory: only files really inside count
            try:
                real = self.workspace.resolve(self.workspace.relative(f))
            except (SandboxError, ValueError):
                continue
            if real.stat().st_size > MAX_SEARCH_FILE_BYTES:
                continue
            try:
                lines = real.read_text("utf-8").splitlines()
            except UnicodeDecodeError:
                continue  # binary file
            for number, line in enumerate(lines, 1):
                if needle in line.lower():
                    hits.append(f"{self.workspace.relative(f)}:{number}: {line[:200]}")
                    if len(hits) >= MAX_SEARCH_RESULTS:
                        hits.append(f"[stopped at {MAX_SEARCH_RESULTS} results]")
                        return ToolOutcome("\n".join(hits), True)
        return ToolOutcome("\n".join(hits) if hits else f"no line contains {text!r}", True)

    def _run(self, command: str) -> ToolOutcome:
        timeout = self.time_left() if self.time_left else None
        result = self.commands.run(command, timeout_s=timeout)
        policy = self.commands.policy
        limit = policy.timeout_s if timeout is None else min(timeout, policy.timeout_s)
        text = result.report(policy.max_output_bytes, limit)
        return ToolOutcome(text, result.exit_code == 0)

    def _finish(self, summary: str) -> ToolOutcome:
        return ToolOutcome(str(summary), True, finished=True)
