"""Step costs fitted on named machines, read from `data/step_costs.toml` with their provenance.

The numbers are measurements of particular hardware, so they live in data beside where they
came from (command, machine, date), not in code: the simulator, the policy benchmark and the
policy tests name the one they want.
"""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from importlib import resources

from tokenfactory.scheduling.step_model import StepCoefficients

_FIELDS = ("base_s", "per_decode_s", "per_prefill_token_s", "per_kv_token_s", "prefill_step_s")


@dataclass(frozen=True)
class Calibration:
    name: str
    cost: StepCoefficients
    description: str
    source: str
    machine: str = ""
    date: str = ""
    commit: str = ""


@functools.cache
def calibrations() -> dict[str, Calibration]:
    text = resources.files("tokenfactory").joinpath("data/step_costs.toml").read_text("utf-8")
    out = {}
    for name, entry in tomllib.loads(text).items():
        draft = entry.get("per_draft_token_s")
        values = {f: float(entry.get(f, 0.0)) for f in _FIELDS}
        cost = StepCoefficients(
            **values, per_draft_token_s=None if draft is None else float(draft)
        )
        out[name] = Calibration(
            name=name,
            cost=cost,
            description=entry["description"],
            source=entry["source"],
            machine=entry.get("machine", ""),
            date=entry.get("date", ""),
            commit=entry.get("commit", ""),
        )
    return out


def step_cost(name: str) -> StepCoefficients:
    """The step costs fitted as `name` (see data/step_costs.toml)."""
    known = calibrations()
    if name not in known:
        raise ValueError(f"unknown step-cost calibration {name!r}; known: {', '.join(known)}")
    return known[name].cost
