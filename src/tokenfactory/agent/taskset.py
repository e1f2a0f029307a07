"""The shipped file tasks: each a prompt, starting files and checks, all plain data (TOML in
`agent/tasks/`). A check inspects the workspace after the run and decides solved or not; no
check looks at what the model said, only at what it left behind."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from tokenfactory.agent.sandbox import CommandRunner, SandboxError, Workspace

CHECK_KINDS = (
    "file_equals", "file_contains", "file_lacks", "file_absent", "file_matches", "command_passes"
)


@dataclass(frozen=True)
class Check:
    kind: str
    path: str = ""
    text: str = ""  # file_equals: the content; file_contains/lacks: the text; file_matches: regex
    argv: tuple[str, ...] = ()  # command_passes
    ignore_case: bool = False
    max_chars: int | None = None  # file_contains: the file may hold at most this many

    def verdict(self, workspace: Workspace, commands: CommandRunner) -> str | None:
        """None when the check holds, else what is wrong."""
        if self.kind == "command_passes":
            try:
                result = commands.run(list(self.argv))
            except SandboxError as exc:
                return f"`{' '.join(self.argv)}` could not run: {exc}"
            return None if result.exit_code == 0 else f"`{' '.join(self.argv)}` failed"
        try:
            path = workspace.resolve(self.path)
        except SandboxError as exc:
            return str(exc)
        if self.kind == "file_absent":
            return None if not path.exists() else f"{self.path} still exists"
        if not path.is_file():
            return f"{self.path} does not exist"
        try:
            content = path.read_text("utf-8")
        except UnicodeDecodeError:
            return f"{self.path} is not UTF-8 text"
        if self.max_chars is not None and len(content.strip()) > self.max_chars:
            return f"{self.path} is longer than {self.max_chars} characters"
        have, want = (content, self.text) if not self.ignore_case else (
            content.lower(), self.text.lower()
        )
        if self.kind == "file_equals":
            ok = _normal(have) == _normal(want)
            return None if ok else f"{self.path} does not hold the expected content"
        if self.kind == "file_contains":
            return None if want in have else f"{self.path} lacks {self.text!r}"
        if self.kind == "file_lacks":
            return None if want not in have else f"{self.path} still holds {self.text!r}"
        if self.kind == "file_matches":
            flags = re.IGNORECASE if self.ignore_case else 0
            ok = re.fullmatch(self.text, content.strip(), flags) is not None
            return None if ok else f"{self.path} does not match {self.text!r}"
        return f"unknown check kind {self.kind!r}"


def _normal(text: str) -> str:
    """Content compared line by line, trailing spaces and final newlines ignored."""
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


@dataclass(frozen=True)
class AgentTask:
    name: str
    prompt: str
    files: dict[str, str] = field(default_factory=dict)
    checks: tuple[Check, ...] = ()

    def populate(self, workspace: Workspace) -> None:
        for rel, content in self.files.items():
            workspace.write_text(rel, content)

    def judge(self, workspace: Workspace, commands: CommandRunner) -> list[str]:
        """What is wrong with the workspace; empty: solved."""
        return [v for c in self.checks if (v := c.verdict(workspace, commands)) is not None]


class TaskFileError(ValueError):
    pass


def parse_task(name: str, doc: dict) -> AgentTask:
    try:
        checks = []
        for c in doc["checks"]:
            kind = c["kind"]
            if kind not in CHECK_KINDS:
                raise TaskFileError(f"task {name}: unknown check kind {kind!r}")
            checks.append(
                Check(
                    kind=kind,
                    path=c.get("path", ""),
                    text=c.get("text", ""),
                    argv=tuple(c.get("argv", ())),
                    ignore_case=bool(c.get("ignore_case", False)),
                    max_chars=c.get("max_chars"),
                )
            )
        return AgentTask(
            name=name,
            prompt=str(doc["prompt"]).strip(),
            files={str(k): str(v) for k, v in doc.get("files", {}).items()},
            checks=tuple(checks),
        )
    except (KeyError, TypeError) as exc:
        raise TaskFileError(f"task {name}: missing or bad field {exc}") from None


def load_tasks(directory: Path | None = None) -> list[AgentTask]:
    """Every `*.toml` task in `directory` (default: the shipped set), sorted by name."""
    if directory is None:
        root = resources.files("tokenfactory.agent") / "tasks"
        paths = [Path(str(p)) for p in root.iterdir() if p.name.endswith(".toml")]
    else:
        paths = list(Path(directory).glob("*.toml"))
    tasks = []
    for p in sorted(paths):
        with open(p, "rb") as f:
            tasks.append(parse_task(p.stem, tomllib.load(f)))
    return tasks


def select_tasks(tasks: list[AgentTask], names: str | None) -> list[AgentTask]:
    if not names:
        return tasks
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = {t.name: t for t in tasks}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise TaskFileError(f"unknown tasks {unknown}; known: {sorted(known)}")
    return [known[n] for n in wanted]
