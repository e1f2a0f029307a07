"""A step log: every engine step of a running server, one JSON object a line.

`tokenfactory serve --step-log FILE` writes it; `tokenfactory plan calibrate --step-log FILE`
fits the planner's step model to it. Steps under real load cost more than the idle sweep's
(the HTTP server and the clients share the cores), and the time between two busy steps (the
host's own work on outputs) is part of what a step costs the factory: the log keeps both.
"""

from __future__ import annotations

import json
import threading
from dataclasses import fields
from pathlib import Path
from typing import TextIO

from tokenfactory.scheduling.step_stats import StepStats

_FIELDS = {f.name for f in fields(StepStats)}


class StepLogError(ValueError):
    """A step log that cannot be read."""


class StepLogWriter:
    """Append each recorded step to a file; called on the engine's thread."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file: TextIO | None = self.path.open("a", buffering=1)  # a line at a time
        except OSError as exc:
            raise StepLogError(
                f"cannot write the step log {self.path}: {exc.strerror or exc}"
            ) from None
        self._lock = threading.Lock()

    def __call__(self, step: StepStats) -> None:
        line = json.dumps(step.to_dict(), separators=(",", ":")) + "\n"
        with self._lock:
            if self._file is not None:
                self._file.write(line)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read_step_log(path: str | Path) -> list[StepStats]:
    """The steps of a log, oldest first. A last line cut short by a crash is skipped; any
    other unreadable line is an error naming it."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise StepLogError(f"cannot read step log {path}: {exc.strerror or exc}") from None
    steps: list[StepStats] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            steps.append(StepStats(**{k: v for k, v in doc.items() if k in _FIELDS}))
        except (ValueError, TypeError) as exc:
            if n == len(lines):
                break  # the write a crash interrupted
            raise StepLogError(f"{path}, line {n}: not a step ({exc})") from None
    if not steps:
        raise StepLogError(f"{path} holds no steps")
    return steps
