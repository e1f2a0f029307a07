"""Paths the model names, resolved inside one workspace directory or refused.

Every check runs on the fully resolved path (symlinks followed, dangling ones included), so a
symlink inside the workspace that points out of it, or a directory symlink that a new file
would be created through, is refused like `..` or an absolute path.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from tokenfactory.agent.sandbox.errors import SandboxError


class Workspace:
    """One directory the agent may read and write; nothing outside it."""

    def __init__(self, root: str | Path) -> None:
        path = Path(root).expanduser()
        if not path.is_dir():
            raise SandboxError(f"workspace {path} is not a directory")
        self.root = path.resolve(strict=True)

    def resolve(self, name: str) -> Path:
        """The real path of `name` (relative to the workspace root), or SandboxError."""
        if not isinstance(name, str):
            raise SandboxError("a path must be a string")
        if "\x00" in name:
            raise SandboxError("a path may not contain NUL bytes")
        text = name.strip() or "."
        pure = PurePosixPath(text)
        if pure.is_absolute() or text.startswith("~"):
            raise SandboxError(
                f"{name!r} is an absolute path; use a path relative to the workspace"
            )
        if ".." in pure.parts:
            raise SandboxError(f"{name!r} leaves the workspace ('..' is not allowed)")
        # realpath follows every symlink on the way, even one whose target does not exist yet
        real = Path(os.path.realpath(self.root / pure))
        if not real.is_relative_to(self.root):
            raise SandboxError(
                f"{name!r} resolves to a place outside the workspace (through a symlink)"
            )
        return real

    def relative(self, path: Path) -> str:
        """How the model sees a resolved path: relative to the root, '/'-separated."""
        rel = path.relative_to(self.root).as_posix()
        return rel if rel else "."

    def existing_file(self, name: str) -> Path:
        path = self.resolve(name)
        if not path.exists():
            raise SandboxError(f"{name!r} does not exist")
        if not path.is_file():
            raise SandboxError(f"{name!r} is not a regular file")
        return path

    def existing_dir(self, name: str) -> Path:
        path = self.resolve(name)
        if not path.exists():
            raise SandboxError(f"{name!r} does not exist")
        if not path.is_dir():
            raise SandboxError(f"{name!r} is not a directory")
        return path

    def write_text(self, name: str, content: str) -> Path:
        """Create or replace a file, making parent directories; every created directory and
        the file itself are checked after resolution, and the file opened without following a
        symlink, so a link swapped in at the last moment is not written through."""
        path = self.resolve(name)
        if path == self.root:
            raise SandboxError("cannot write to the workspace directory itself")
        if path.exists() and not path.is_file():
            raise SandboxError(f"{name!r} exists and is not a regular file")
        parent = path.parent
        parent.mkdir(parents=True, exist_ok=True)
        if not Path(os.path.realpath(parent)).is_relative_to(self.root):
            raise SandboxError(f"{name!r} would be created outside the workspace")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as exc:
            raise SandboxError(f"cannot write {name!r}: {exc.strerror}") from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content)
        return path
