"""The shipped speculation workloads: chat prompts (free-form answers) and agent prompts
(answers that copy their context), as chat messages (data/speculation_workloads.toml).

The engine benchmark's speculation part runs both; the server's capacity probe uses them to
measure how often drafts are accepted on each kind of traffic.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

WORKLOADS: tuple[str, ...] = ("chat", "agent")
_DATA = "data/speculation_workloads.toml"


@dataclass(frozen=True)
class WorkloadPrompt:
    """One prompt of a workload: `messages` as the chat template and the OpenAI API take them
    ([{"role": ..., "content": ...}], an optional system message, then the user's)."""

    workload: str
    name: str
    kind: str  # what the task asks for: explain, rewrite, json-transform, quote, fix-bug, ...
    messages: list[dict[str, str]]


@cache
def _load_file() -> dict[str, Any]:
    text = resources.files("tokenfactory").joinpath(_DATA).read_text("utf-8")
    return tomllib.loads(text)


def load_workload(name: str) -> list[WorkloadPrompt]:
    """The prompts of workload `name` ("chat" or "agent"), in file order; a fresh list each
    call. Raises ValueError for any other name."""
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}: expected one of {', '.join(WORKLOADS)}")
    prompts = []
    for entry in _load_file().get(name, []):
        messages = []
        if entry.get("system"):
            messages.append({"role": "system", "content": entry["system"]})
        messages.append({"role": "user", "content": entry["user"]})
        prompts.append(WorkloadPrompt(name, entry["name"], entry["kind"], messages))
    return prompts
