"""`tokenfactory bench structured-output`: what constrained decoding adds to a decode step.

Three modes run the same prompts at the same batch sizes, alternated round by round so drift
on a shared machine falls on all of them: plain (no grammar), constrained with the masks filled
on a worker thread during the forward pass (overlap), and constrained with the masks filled
after it (inline). Each measurement admits a batch, lets every prompt finish its prefill, then
times single decode steps while the whole batch is still decoding.

The grammar is a list of records (strings, an enum, bounded numbers, a format) long enough that
no row completes while steps are timed: every timed step masks every row.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from tokenfactory.bench.engine_bench import machine_description
from tokenfactory.engine.constraints.spec import GrammarSpec
from tokenfactory.engine.engine import Engine
from tokenfactory.engine.outputs import Completion
from tokenfactory.engine.sampling.grammar_mask import GrammarMasks, apply_grammar_masks
from tokenfactory.engine.sampling_params import SamplingParams

SCHEMA_SET = "data/structured_output_schemas.jsonl"

RECORDS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "records": {
            "type": "array",
            "minItems": 200,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 40},
                    "email": {"type": "string", "format": "email"},
                    "age": {"type": "integer", "minimum": 0, "maximum": 130},
                    "status": {"enum": ["active", "invited", "disabled"]},
                    "score": {"type": "number", "minimum": 0, "maximum": 1},
                },
                "required": ["name", "email", "age", "status", "score"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["records"],
    "additionalProperties": False,
}

MODES = ("plain", "overlap", "inline")


@dataclass(frozen=True)
class SchemaCase:
    """One entry of the shipped schema set: a prompt and the schema its answer must match."""

    name: str
    prompt: str
    schema: dict[str, Any]


def load_schema_set() -> list[SchemaCase]:
    text = resources.files("tokenfactory").joinpath(SCHEMA_SET).read_text("utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [SchemaCase(r["name"], r["prompt"], r["schema"]) for r in rows]


def answer_schema_set(engine: Engine, cases: list[SchemaCase]) -> list[Completion]:
    """Greedy answers to the cases' prompts, each held to its schema (up to 160 tokens)."""
    prompts = [
        engine.chat_prompt([{"role": "user", "content": f"{c.prompt} Answer in JSON."}])
        for c in cases
    ]
    params = [
        SamplingParams(temperature=0.0, max_tokens=160, grammar=GrammarSpec.json_schema(c.schema))
        for c in cases
    ]
    return engine.generate(prompts, params)


@dataclass
class StructuredBenchOptions:
    batch_sizes: list[int] = field(default_factory=lambda: [1, 64])
    steps: int = 12  # decode steps timed per measurement
    rounds: int = 3


def _prompts(engine: Engine, n: int) -> list[list[int]]:
    assert engine.tokenizer is not None, "the benchmark needs a model with a tokenizer"
    cases = load_schema_set()
    out = []
    for i in range(n):
        case = cases[i % len(cases)]
        content = f"{case.prompt} Answer in JSON. (request {i})"
        text = engine.chat_prompt([{"role": "user", "content": content}])
        out.append(engine.tokenizer.encode(text))
    return out


def _measure(engine: Engine, prompts: list[list[int]], mode: str, steps: int) -> list[float]:
    """Seconds per decode step while all `prompts` decode, in `mode`."""
    grammar = None if mode == "plain" else GrammarSpec.json_schema(RECORDS_SCHEMA)
    if grammar is not None:
        engine.grammar_masks.overlap = mode == "overlap"
    params = SamplingParams(temperature=0.0, max_tokens=steps + 8, ignore_eos=True, grammar=grammar)
    ids = [engine.add_request(p, params) for p in prompts]
    try:
        seqs = [engine._requests[i].seq for i in ids]
        while any(s.num_output_tokens == 0 for s in seqs):
            engine.step()
        times = []
        for _ in range(steps):
            started = time.perf_counter()
            outs = engine.step()
            times.append(time.perf_counter() - started)
            if any(o.finished for o in outs):
                raise RuntimeError("a request finished while steps were timed")
        return times
    finally:
        for i in ids:
            engine.abort(i)


def run_structured_output_bench(
    engine: Engine, opts: StructuredBenchOptions, console: Console
) -> dict[str, Any]:
    results: dict[int, dict[str, list[float]]] = {
        b: {m: [] for m in MODES} for b in opts.batch_sizes
    }
    fastest = {b: dict.fromkeys(MODES, float("inf")) for b in opts.batch_sizes}
    # (constrained steps, fill seconds, wait seconds) summed over rounds, per batch and mode
    mask_sums = {(b, m): [0, 0.0, 0.0] for b in opts.batch_sizes for m in MODES[1:]}
    prompts = {b: _prompts(engine, b) for b in opts.batch_sizes}
    # Warm-up: the grammar tokenizer, kernels and the prefix cache for the prompts.
    for b in opts.batch_sizes:
        _measure(engine, prompts[b], "overlap", 2)
    # Timed after the warm-up: the first calls in a fresh process run slow for a while.
    apply_s = {b: _apply_time(engine, b) for b in opts.batch_sizes}
    for r in range(opts.rounds):
        for b in opts.batch_sizes:
            order = MODES if r % 2 == 0 else tuple(reversed(MODES))
            for mode in order:
                before = _snapshot(engine)
                step_s = _measure(engine, prompts[b], mode, opts.steps)
                results[b][mode].append(statistics.median(step_s))
                fastest[b][mode] = min(fastest[b][mode], *step_s)
                if mode != "plain":
                    sums = mask_sums[(b, mode)]
                    for k, (now, then) in enumerate(zip(_snapshot(engine), before, strict=True)):
                        sums[k] += now - then
                console.print(
                    f"round {r + 1} batch {b:3d} {mode:8s} {1e3 * results[b][mode][-1]:8.2f} ms"
                )
    rows = []
    for b in opts.batch_sizes:
        plain = statistics.median(results[b]["plain"])
        row: dict[str, Any] = {"batch": b, "plain_ms": 1e3 * plain}
        # The fastest step of each mode: the one least disturbed by other work on a shared
        # machine, where medians drift with the neighbours' load.
        row["fastest_ms"] = {m: 1e3 * fastest[b][m] for m in MODES}
        row["fastest_overhead"] = {m: fastest[b][m] / fastest[b]["plain"] - 1 for m in MODES[1:]}
        for mode in MODES[1:]:
            ms = statistics.median(results[b][mode])
            steps, fill, wait = mask_sums[(b, mode)]
            row[f"{mode}_ms"] = 1e3 * ms
            row[f"{mode}_overhead"] = ms / plain - 1
            # Means over every constrained step run (prefill's last chunk and warm-up included).
            row[f"{mode}_mask_fill_ms"] = 1e3 * fill / steps if steps else None
            row[f"{mode}_mask_wait_ms"] = 1e3 * wait / steps if steps else None
        row["rounds_ms"] = {m: [1e3 * x for x in results[b][m]] for m in MODES}
        row["apply_min_ms"] = 1e3 * apply_s[b]
        rows.append(row)
    result = {
        "benchmark": "structured-output",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_description(engine),
        "model": engine.model_name,
        "steps_per_measurement": opts.steps,
        "rounds": opts.rounds,
        "schema": RECORDS_SCHEMA,
        "rows": rows,
    }
    console.print(_table(rows))
    return result


def _apply_time(engine: Engine, rows: int, repeats: int = 50) -> float:
    """The sampler's mask application on `rows` rows of logits, fastest of `repeats` (the
    least disturbed by other work on the machine)."""
    vocab = engine.model_config.vocab_size
    logits = torch.randn(rows, vocab)
    words = (vocab + 31) // 32
    bits = torch.randint(-(2**31), 2**31 - 1, (rows, words), dtype=torch.int32)
    masks = GrammarMasks(list(range(rows)), bits)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        apply_grammar_masks(logits, masks)
        best = min(best, time.perf_counter() - started)
    return best


def _snapshot(engine: Engine) -> tuple[int, float, float]:
    t = engine.grammar_masks.times
    return t.steps, t.fill_s, t.wait_s


def _table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="Decode step with and without a grammar (ms): median / fastest")
    for col in ("batch", "plain", "overlap", "inline", "fill / wait", "apply"):
        table.add_column(col, justify="right")
    for r in rows:
        fast, over = r["fastest_ms"], r["fastest_overhead"]
        fill, wait = r["overlap_mask_fill_ms"], r["overlap_mask_wait_ms"]
        cells = [str(r["batch"]), f"{r['plain_ms']:.1f} / {fast['plain']:.1f}"]
        for mode in MODES[1:]:
            cells.append(
                f"{r[f'{mode}_ms']:.1f} ({100 * r[f'{mode}_overhead']:+.0f}%)"
                f" / {fast[mode]:.1f} ({100 * over[mode]:+.1f}%)"
            )
        cells.append("-" if fill is None else f"{fill:.2f} / {wait:.2f}")
        cells.append(f"{r['apply_min_ms']:.2f}")
        table.add_row(*cells)
    return table
