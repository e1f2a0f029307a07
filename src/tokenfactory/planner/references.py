"""Published throughputs to set a frontier beside (data/hardware_references.toml)."""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class Reference:
    engine: str
    model: str
    hardware: str
    weights: str
    output_tokens_per_s: float
    workload: str
    source: str

    @property
    def label(self) -> str:
        return f"{self.engine}, {self.hardware.upper()} {self.weights} (published)"


@functools.cache
def references() -> tuple[Reference, ...]:
    path = resources.files("tokenfactory").joinpath("data/hardware_references.toml")
    doc = tomllib.loads(path.read_text("utf-8"))
    return tuple(Reference(**r) for r in doc.get("reference", []))


def for_model(model: str) -> list[Reference]:
    return [r for r in references() if r.model == model]
