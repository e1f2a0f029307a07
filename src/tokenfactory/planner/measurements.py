"""Measured steps for the fits: `tokenfactory bench engine` JSON, and the sweeps shipped in
data/hardware_sweeps.toml (each with the run it came from)."""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from tokenfactory.planner.perf_model import Sample, StepWork


@dataclass(frozen=True)
class Sweep:
    name: str
    hardware: str
    model: str
    weights: str
    source: str
    samples: tuple[Sample, ...]


def decode_sample(batch: int, context: float, step_s: float, tag: str = "") -> Sample:
    label = f"batch {batch}, context {round(context)}" + (f" ({tag})" if tag else "")
    return Sample(StepWork(seqs=batch, context=context), step_s, label)


def prefill_sample(tokens: int, seconds: float) -> Sample:
    # A prompt's tokens attend over half the prompt on average.
    work = StepWork(seqs=0, context=0, prefill_tokens=tokens, prefill_context=tokens / 2)
    return Sample(work, seconds, f"prefill {tokens} tokens")


def samples_from_bench(doc: dict[str, Any], statistic: str = "median") -> list[Sample]:
    """The decode sweep (and prefill) of a `tokenfactory bench engine` result. `statistic`
    "min" takes each batch's fastest step: on a machine shared with other work the median
    carries their interference."""
    if doc.get("schema") != "tokenfactory.bench.engine/1":
        raise ValueError("not a `tokenfactory bench engine` result (its schema differs)")
    key = "step_ms_min" if statistic == "min" else "step_ms"
    out = [
        decode_sample(row["batch"], row["context"], row[key] / 1e3)
        for row in doc.get("decode_sweep", [])
        if "skipped" not in row
    ]
    pre = doc.get("prefill")
    if pre:
        out.append(prefill_sample(pre["prompt_tokens"], pre["time_ms"] / 1e3))
    if not out:
        raise ValueError("the result holds no decode sweep and no prefill")
    return out


# The capacity probe (server/capacity.py) decodes 12 steps after a 32-token prompt and
# keeps their median: the median step attends over about 32 + 6 tokens.
PROBE_CONTEXT = 38


def samples_from_probe(doc: dict[str, Any]) -> list[Sample]:
    """The decode steps and idle TTFT of a capacity-probe cache (`capacity-*.json` in the
    server's data directory), tagged 'probe'."""
    try:
        out = [
            decode_sample(p["batch"], PROBE_CONTEXT, p["step_s"], "probe") for p in doc["points"]
        ]
        out.append(prefill_sample(doc["ttft_prompt_tokens"], doc["ttft_s"]))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a capacity-probe cache: {exc}") from None
    return out


@functools.cache
def shipped_sweeps() -> dict[str, Sweep]:
    text = resources.files("tokenfactory").joinpath("data/hardware_sweeps.toml").read_text("utf-8")
    out = {}
    for name, entry in tomllib.loads(text).items():
        samples = [
            decode_sample(s["batch"], s["context"], s["step_ms"] / 1e3, s.get("tag", ""))
            for s in entry.get("steps", [])
        ]
        samples += [prefill_sample(p["tokens"], p["ms"] / 1e3) for p in entry.get("prefill", [])]
        out[name] = Sweep(
            name, entry["hardware"], entry["model"], entry.get("weights", "bf16"),
            entry["source"], tuple(samples),
        )
    return out
