"""Measured steps for the fits: `tokenfactory bench engine` JSON, and the sweeps shipped in
data/hardware_sweeps.toml (each with the run it came from)."""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from tokenfactory.planner.perf_model import Sample, StepWork
from tokenfactory.scheduling.step_stats import StepStats


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


MIN_GROUP = 5  # steps of one shape before their median counts as a sample


def samples_from_step_log(*logs: list[StepStats]) -> list[Sample]:
    """Samples from served engines' step logs (`serve --step-log`, one or more runs): what
    each step cost the factory, from its start to the next step's while work remained (the
    host's handling of outputs between two steps is part of it), grouped by shape over all
    the logs and summarized by the median. Decode-only steps group by batch; steps that
    computed prompt tokens by batch and prompt tokens (to a power of two)."""
    groups: dict[tuple[int, int], list[tuple[float, StepStats]]] = {}
    for steps in logs:
        for step, after in zip(steps, steps[1:], strict=False):
            cycle = step.duration_s
            if step.num_running > 0 and after.started_at > step.started_at:
                # Work remained, so the loop went straight on: the gap was this step's.
                cycle = min(after.started_at - step.started_at, step.duration_s + 1.0)
            seqs = step.num_decode_tokens
            bucket = step.num_prefill_tokens.bit_length()  # 0 for a decode-only step
            groups.setdefault((seqs, bucket), []).append((cycle, step))
    total = sum(len(steps) for steps in logs)
    out: list[Sample] = []
    for (seqs, bucket), members in sorted(groups.items()):
        if len(members) < MIN_GROUP or (seqs == 0 and bucket == 0):
            continue
        cycles = sorted(c for c, _ in members)
        median = cycles[len(cycles) // 2]
        n = len(members)
        prefill = sum(s.num_prefill_tokens for _, s in members) / n
        # The KV a step reads, split over its decode rows and its prompt tokens (each of
        # those attends over about half its prompt).
        kv = sum(s.num_kv_tokens_read for _, s in members) / n
        context = max(0.0, kv - prefill * prefill / 2) / seqs if seqs else 0.0
        work = StepWork(
            seqs=seqs, context=context, prefill_tokens=prefill,
            prefill_context=prefill / 2 if prefill else None,
        )
        label = f"batch {seqs}" + (f", prefill ~{round(prefill)}" if prefill else "")
        out.append(Sample(work, median, f"{label} ({n} steps)"))
    if len(out) < 2:
        raise ValueError(
            f"the log's {total} steps give {len(out)} shape(s) seen {MIN_GROUP}+ times: "
            "log a longer run under load"
        )
    return out
