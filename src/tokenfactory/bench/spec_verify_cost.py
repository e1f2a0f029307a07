"""What verifying draft tokens costs a step, and what speed per user speculation buys.

    python -m tokenfactory.bench.spec_verify_cost --device cuda --random-weights llama-3.1-8b \
        --out DIR [--acceptance 0.6,0.8 | --acceptance FILE.json] [--budget-s 300]

(`tools/gpu_spec_check.sh` wraps it for the device machine.)

1. Measurement. B sequences with a prompt of `--context` tokens are prefilled through the
   engine's own runner, KV slots from its block manager. Then, for each batch B and draft
   depth k, the step where every one of the B sequences verifies k draft tokens (a span of
   1 + k rows: its last token and the draft; k = 0 is a plain decode step, which takes the
   decode CUDA graphs where the runner has them) is run `--warmup` times untimed and `--reps`
   times timed. step_s[B][k] is the median of runner.execute plus the sampler over every row,
   synchronised: what an engine step spends in the model and sampler. Not included: the
   scheduler's plan, the proposer (n-gram lookup is host work; a draft model is a forward of
   its own) and detokenizing.
2. Fits. per_draft_token_s by least squares over the table: over every point with the
   scheduler's features (1, decodes, draft tokens; step_model.py), with a fixed cost for a
   step that verifies any draft besides, and per batch over its k >= 1 points.
3. Speed. For each acceptance rate a (an input: `--acceptance`, or representative values
   when none is given; never measured here) and batch B, the depth k* that maximises tokens
   per second per user E(k) / step_s(B, k), E(k) = (1 - a^(k+1)) / (1 - a); the speed per
   user and in total at k*; and, from the shipped tier definitions (`tokenfactory.tiers`),
   which tiers' per-user promises hold at which batch.

Everything lands in DIR/spec_verify_cost.json, rewritten after each batch so a run cut short
keeps what it measured, and DIR/spec_verify_cost.png where matplotlib is installed.
`--table FILE` redoes steps 2-3 from an earlier JSON (other acceptance rates, another tier
file) without measuring.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.engine import Engine
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.engine.scheduler import ScheduledChunk, SchedulerOutput
from tokenfactory.engine.sequence import Sequence as EngineSequence
from tokenfactory.engine.speculation.verify import DraftRow, sample_rows
from tokenfactory.scheduling.acceptance import expected_tokens
from tokenfactory.tiers import TierCatalog, load_tiers

SCHEMA = "tokenfactory.bench.spec_verify_cost/1"
JSON_NAME = "spec_verify_cost.json"
PNG_NAME = "spec_verify_cost.png"
# Inputs, not measurements: 0.5 is the scheduler's prior before any draft was verified
# (scheduling/speculation.py); 0.7 and 0.9 stand for a fair and a very good proposer.
DEFAULT_ACCEPTANCE = (0.5, 0.7, 0.9)
_GREEDY = SamplingParams(temperature=0.0)


@dataclass(frozen=True)
class SweepOptions:
    batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    depths: tuple[int, ...] = tuple(range(9))
    context: int = 1024  # prompt tokens per sequence before the timed steps
    warmup: int = 2
    reps: int = 7
    # Stop starting new batches once this many seconds have passed since `start` (None: no
    # limit); the batches measured so far are kept.
    budget_s: float | None = None
    seed: int = 0


@dataclass(frozen=True)
class StepPoint:
    batch: int
    depth: int  # draft tokens each sequence verifies
    step_s: float  # median of runner + sampler
    step_s_min: float
    forward_s: float  # median of the runner alone (to the synchronised logits)
    reps: int
    rows: int  # tokens in the step: batch * (1 + depth)


@dataclass
class StepTable:
    context: int
    points: list[StepPoint] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)  # batch -> why it was not measured
    errors: dict[str, str] = field(default_factory=dict)  # "B,k" -> the step's exception

    def step_s(self) -> dict[int, dict[int, float]]:
        table: dict[int, dict[int, float]] = {}
        for p in self.points:
            table.setdefault(p.batch, {})[p.depth] = p.step_s
        return table


@dataclass(frozen=True)
class Acceptance:
    """An acceptance rate to plan with, and where it came from."""

    rate: float
    label: str


# ---- measurement ----------------------------------------------------------------------------


def _sync(engine: Engine) -> None:
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)


def _prefill(engine: Engine, seqs: list[EngineSequence]) -> None:
    """Compute every prompt through the runner, several per step within the token budget, and
    append the sampled token: the sequences then stand where a decode step finds them."""
    budget = engine.config.max_num_batched_tokens
    i = 0
    while i < len(seqs):
        group = [seqs[i]]
        tokens = seqs[i].num_prompt_tokens
        while i + len(group) < len(seqs) and tokens + seqs[i + len(group)].num_tokens <= budget:
            tokens += seqs[i + len(group)].num_tokens
            group.append(seqs[i + len(group)])
        chunks = [ScheduledChunk(s, 0, s.num_prompt_tokens) for s in group]
        logits = engine.runner.execute(SchedulerOutput(chunks, [], tokens, 0))
        sampled = engine.sampler(logits, list(group))
        for seq, token in zip(group, sampled.token_ids, strict=True):
            seq.num_computed_tokens = seq.num_prompt_tokens
            seq.output_token_ids.append(token)
        i += len(group)
    _sync(engine)


def _verify_step(
    seqs: list[EngineSequence], drafts: list[list[int]], depth: int
) -> tuple[SchedulerOutput, list[EngineSequence | DraftRow]]:
    """The step where each sequence verifies the first `depth` tokens of its draft (a plain
    decode when depth is 0), built as the scheduler and `attach_drafts` build it, and the rows
    the engine hands the sampler."""
    chunks = []
    rows: list[EngineSequence | DraftRow] = []
    for seq, draft in zip(seqs, drafts, strict=True):
        d = draft[:depth]
        chunks.append(
            ScheduledChunk(
                seq, seq.num_computed_tokens, 1 + depth, draft_slots=depth, draft=list(d)
            )
        )
        rows += sample_rows(seq, d) if d else [seq]
    return SchedulerOutput(chunks, [], 0, len(seqs)), rows


def _rows(rows: list[EngineSequence | DraftRow]) -> list[EngineSequence]:
    """The sampler reads only params and tokens, which a DraftRow has too (as in
    `Engine._sample`; the sampler's annotation names sequences alone)."""
    return cast(list[EngineSequence], rows)


def _time_step(
    engine: Engine,
    seqs: list[EngineSequence],
    drafts: list[list[int]],
    depth: int,
    opts: SweepOptions,
) -> StepPoint:
    step_times: list[float] = []
    forward_times: list[float] = []
    for rep in range(opts.warmup + opts.reps):
        # Neither the runner nor the sampler changes the sequences: each rep is the same step,
        # rewriting the same KV slots.
        step, rows = _verify_step(seqs, drafts, depth)
        _sync(engine)
        t0 = time.perf_counter()
        logits = engine.runner.execute(step)
        _sync(engine)
        t1 = time.perf_counter()
        with torch.inference_mode():
            engine.sampler(logits, _rows(rows))  # returns host lists: synchronised
        _sync(engine)
        t2 = time.perf_counter()
        if rep >= opts.warmup:
            forward_times.append(t1 - t0)
            step_times.append(t2 - t0)
    return StepPoint(
        batch=len(seqs),
        depth=depth,
        step_s=statistics.median(step_times),
        step_s_min=min(step_times),
        forward_s=statistics.median(forward_times),
        reps=len(step_times),
        rows=len(seqs) * (1 + depth),
    )


def measure(
    engine: Engine,
    opts: SweepOptions,
    start: float | None = None,
    on_batch: Callable[[StepTable], None] | None = None,
    console: Console | None = None,
) -> StepTable:
    """step_s[B][k] on the engine's own runner, sampler, KV cache and block manager."""
    start = time.monotonic() if start is None else start
    batches = sorted(set(opts.batches))
    depths = sorted(set(opts.depths))
    max_depth = max(depths)
    rng = random.Random(opts.seed)
    vocab = engine.model_config.vocab_size
    low = 256 if vocab > 512 else 1  # clear of the low ids where special tokens live
    if opts.context + 1 + max_depth > engine.max_model_len:
        raise ValueError(
            f"context {opts.context} + 1 + {max_depth} draft tokens exceeds the engine's "
            f"max_model_len {engine.max_model_len}"
        )
    seqs: list[EngineSequence] = []
    blocks = engine.block_manager
    table = StepTable(context=opts.context)
    try:
        for i in range(max(batches)):
            # Random, so no prefix is shared through the prefix cache.
            prompt = [rng.randrange(low, vocab) for _ in range(opts.context)]
            seq = EngineSequence(f"spec-verify-{i}", prompt, _GREEDY)
            blocks.allocate_prefix(seq)
            # Slots for the prompt, the sampled token and the deepest draft, reserved once.
            if not blocks.append_slots(seq, opts.context + 1 + max_depth):
                raise ValueError(
                    f"KV cache ({engine.num_kv_blocks} blocks) too small for {max(batches)} "
                    f"sequences of {opts.context + 1 + max_depth} tokens"
                )
            seqs.append(seq)
        t0 = time.monotonic()
        _prefill(engine, seqs)
        if console:
            console.print(
                f"prefilled {len(seqs)} x {opts.context} tokens in {time.monotonic() - t0:.1f} s"
            )
        drafts = [[rng.randrange(low, vocab) for _ in range(max_depth)] for _ in seqs]
        last_batch_s = 0.0
        for b in batches:
            elapsed = time.monotonic() - start
            # A larger batch takes at least as long as the last one: skip it rather than
            # run past the budget.
            if opts.budget_s is not None and elapsed + 1.5 * last_batch_s > opts.budget_s:
                table.skipped[b] = f"time budget ({opts.budget_s:g} s) spent"
                continue
            t0 = time.monotonic()
            for k in depths:
                try:
                    table.points.append(_time_step(engine, seqs[:b], drafts[:b], k, opts))
                except Exception as e:  # one failing shape must not cost the whole run
                    table.errors[f"{b},{k}"] = repr(e)
                    if console:
                        console.print(f"[red]batch {b}, depth {k} failed:[/red] {e!r}")
            last_batch_s = time.monotonic() - t0
            if console:
                row = " ".join(f"{p.step_s * 1e3:.2f}" for p in table.points if p.batch == b)
                console.print(f"batch {b}: step ms by depth {depths}: {row}")
            if on_batch:
                on_batch(table)
    finally:
        for seq in seqs:
            blocks.free(seq)
    return table


# ---- fits -----------------------------------------------------------------------------------


def _lstsq(rows: list[list[float]], y: list[float]) -> tuple[np.ndarray, float] | None:
    """Least-squares coefficients and RMS residual; None where the points do not determine
    every coefficient."""
    x = np.array(rows, dtype=np.float64)
    t = np.array(y, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < x.shape[1] or np.linalg.matrix_rank(x) < x.shape[1]:
        return None
    coef, *_ = np.linalg.lstsq(x, t, rcond=None)
    rms = float(np.sqrt(np.mean((x @ coef - t) ** 2)))
    return coef, rms


def _named_fit(
    rows: list[list[float]], targets: list[float], names: list[str]
) -> dict[str, Any] | None:
    """Least squares of `targets` on `rows`, its coefficients by name (None: no fit)."""
    fit = _lstsq(rows, targets)
    if fit is None:
        return None
    coef, rms = fit
    return {**{n: float(c) for n, c in zip(names, coef, strict=True)}, "rms_s": rms,
            "points": len(targets)}


def fit_costs(step_s: Mapping[int, Mapping[int, float]]) -> dict[str, Any]:
    """per_draft_token_s and its neighbours, by least squares over the table (seconds)."""
    pts = [(b, k, s) for b, by_k in step_s.items() for k, s in by_k.items()]
    out: dict[str, Any] = {}
    names = ["base_s", "per_decode_s", "per_draft_token_s"]
    # The scheduler's step model as it applies here (no prompt tokens; KV tokens read grow
    # with the batch at a fixed context, so per_decode_s carries them).
    out["scheduler_features"] = _named_fit(
        [[1.0, b, b * k] for b, k, _ in pts], [s for *_, s in pts], names
    )
    # With a fixed cost for any step that verifies drafts: none is expected (such a step is
    # decode-only and replays the decode graphs), this shows whether there is one.
    out["with_verify_step"] = _named_fit(
        [[1.0, b, b * k, 1.0 if k > 0 else 0.0] for b, k, _ in pts],
        [s for *_, s in pts],
        [*names, "verify_step_s"],
    )
    per_batch: dict[str, Any] = {}
    for b, by_k in sorted(step_s.items()):
        verify = [(k, s) for k, s in sorted(by_k.items()) if k > 0]
        fit = _lstsq([[1.0, b * k] for k, _ in verify], [s for _, s in verify])
        per_batch[str(b)] = (
            None
            if fit is None
            else {
                "per_draft_token_s": float(fit[0][1]),
                "intercept_s": float(fit[0][0]),
                "decode_step_s": by_k.get(0),
                "rms_s": fit[1],
                "depths": [k for k, _ in verify],
            }
        )
    out["per_batch"] = per_batch
    return out


# ---- speed per user -------------------------------------------------------------------------


@dataclass(frozen=True)
class DepthChoice:
    """The best uniform draft depth for one batch and acceptance rate."""

    batch: int
    acceptance: float
    depth: int
    expected_tokens: float  # E(k): tokens each sequence emits per step
    step_s: float
    tokens_per_s_per_user: float
    tokens_per_s: float
    plain_tokens_per_s_per_user: float | None  # depth 0, where measured


def best_depth(step_s_by_depth: Mapping[int, float], acceptance: float, batch: int) -> DepthChoice:
    """k* = argmax E(k) / step_s(k); the shallower depth wins a tie (fewer wasted rows)."""
    best: DepthChoice | None = None
    for k in sorted(step_s_by_depth):
        s = step_s_by_depth[k]
        e = expected_tokens(acceptance, k)
        choice = DepthChoice(batch, acceptance, k, e, s, e / s, batch * e / s, None)
        if best is None or choice.tokens_per_s_per_user > best.tokens_per_s_per_user:
            best = choice
    if best is None:
        raise ValueError(f"batch {batch}: no depths measured")
    plain = step_s_by_depth.get(0)
    return DepthChoice(
        **{**asdict(best), "plain_tokens_per_s_per_user": None if plain is None else 1.0 / plain}
    )


def plan_speeds(
    step_s: Mapping[int, Mapping[int, float]], acceptances: Sequence[Acceptance]
) -> list[DepthChoice]:
    return [
        best_depth(step_s[b], a.rate, b) for a in acceptances for b in sorted(step_s) if step_s[b]
    ]


@dataclass(frozen=True)
class TierVerdict:
    """Where one tier's per-user promise holds: with speculation at one acceptance rate, or
    with plain decoding (acceptance None)."""

    tier: str
    tokens_per_s: float
    acceptance: float | None
    batches: list[int]  # measured batches whose speed per user meets the promise
    max_batch: int | None


def tier_verdicts(choices: Sequence[DepthChoice], catalog: TierCatalog) -> list[TierVerdict]:
    plain: dict[int, float] = {}
    for c in choices:
        if c.plain_tokens_per_s_per_user is not None:
            plain[c.batch] = c.plain_tokens_per_s_per_user
    rates = sorted({c.acceptance for c in choices})
    out = []
    for tier in catalog.tiers:
        speeds: list[tuple[float | None, Mapping[int, float]]] = []
        if plain:
            speeds.append((None, plain))
        for rate in rates:
            speeds.append(
                (rate, {c.batch: c.tokens_per_s_per_user for c in choices if c.acceptance == rate})
            )
        for a, by_batch in speeds:
            ok = sorted(b for b, v in by_batch.items() if v >= tier.tokens_per_s)
            out.append(TierVerdict(tier.name, tier.tokens_per_s, a, ok, max(ok, default=None)))
    return out


def parse_acceptance(value: str | None) -> list[Acceptance]:
    """`0.6,0.8`, or a JSON file: a rate, a list of rates, {label: rate}, any of those under
    "acceptance", or the speculation bench's result (its "cells", at the top or one level
    down: one rate per proposer and workload, accepted over drafted tokens summed over the
    batches). None: the representative defaults."""
    if value is None:
        return [Acceptance(a, f"assumed {a}") for a in DEFAULT_ACCEPTANCE]
    if value.endswith(".json") or Path(value).is_file():
        items = _acceptance_from_json(json.loads(Path(value).read_text()), value)
    else:
        items = [(float(v), f"given {v}") for v in value.split(",") if v.strip()]
    for rate, label in items:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"acceptance rate {rate} ({label}) is not in [0, 1]")
    if not items:
        raise ValueError("no acceptance rates given")
    return [Acceptance(rate, label) for rate, label in items]


def _acceptance_from_json(doc: Any, source: str) -> list[tuple[float, str]]:
    cells = _bench_cells(doc)
    if cells is not None:
        drafted: dict[str, list[int]] = {}
        for c in cells:
            spec = c.get("speculative", {})
            key = f"{c.get('proposer')} on {c.get('workload')} ({source})"
            sums = drafted.setdefault(key, [0, 0])
            sums[0] += int(spec.get("draft_tokens", 0))
            sums[1] += int(spec.get("accepted_tokens", 0))
        return [(acc / n, key) for key, (n, acc) in drafted.items() if n > 0]
    if isinstance(doc, dict) and "acceptance" in doc:
        doc = doc["acceptance"]
    if isinstance(doc, int | float):
        doc = [doc]
    if isinstance(doc, dict):
        return [(float(v), str(k)) for k, v in doc.items()]
    if isinstance(doc, list):
        return [(float(v), f"{source}: {v}") for v in doc]
    raise ValueError(f"{source}: expected a rate, a list of rates or {{label: rate}}")


def _bench_cells(doc: Any) -> list[dict[str, Any]] | None:
    if not isinstance(doc, dict):
        return None
    for d in (doc, *(v for v in doc.values() if isinstance(v, dict))):
        cells = d.get("cells")
        if isinstance(cells, list) and all(isinstance(c, dict) for c in cells):
            return cells
    return None


# ---- the report -----------------------------------------------------------------------------


def analyse(
    table: StepTable, acceptances: Sequence[Acceptance], catalog: TierCatalog
) -> dict[str, Any]:
    """Fits, best depths and tier verdicts for a measured table (JSON-ready)."""
    step_s = table.step_s()
    choices = plan_speeds(step_s, acceptances)
    return {
        "fits": fit_costs(step_s),
        "acceptance": {
            "rates": [asdict(a) for a in acceptances],
            "note": "inputs to the plan, not measured by this run",
        },
        "tiers": {"preset": catalog.preset, "source": catalog.source},
        "best_depth": [asdict(c) for c in choices],
        "tier_verdicts": [asdict(v) for v in tier_verdicts(choices, catalog)],
    }


def table_json(table: StepTable) -> dict[str, Any]:
    return {
        "context": table.context,
        "step_s": {
            str(b): {str(k): s for k, s in sorted(by_k.items())}
            for b, by_k in sorted(table.step_s().items())
        },
        "points": [asdict(p) for p in table.points],
        "skipped_batches": {str(b): why for b, why in table.skipped.items()},
        "errors": dict(table.errors),
    }


def table_from_json(doc: dict[str, Any]) -> StepTable:
    m = doc.get("measurement", doc)
    points = [StepPoint(**p) for p in m["points"]]
    skipped = {int(b): why for b, why in m.get("skipped_batches", {}).items()}
    errors = {str(k): str(v) for k, v in m.get("errors", {}).items()}
    return StepTable(int(m["context"]), points, skipped, errors)


def render(report: dict[str, Any], console: Console) -> None:
    m = report["measurement"]
    step_s = {int(b): {int(k): s for k, s in by_k.items()} for b, by_k in m["step_s"].items()}
    depths = sorted({k for by_k in step_s.values() for k in by_k})
    for b, why in m.get("skipped_batches", {}).items():
        console.print(f"batch {b} not measured: {why}")
    for point, why in m.get("errors", {}).items():
        console.print(f"batch,depth {point} failed: {why}")
    if not step_s:
        console.print("nothing measured")
        return
    t = Table(title=f"step ms: every sequence verifies k draft tokens (context ~{m['context']})")
    t.add_column("batch", justify="right")
    for k in depths:
        t.add_column(f"k={k}", justify="right")
    for b in sorted(step_s):
        t.add_row(str(b), *(f"{step_s[b][k] * 1e3:.2f}" if k in step_s[b] else "-" for k in depths))
    console.print(t)
    a = report["analysis"]
    fits = a["fits"]
    for name in ("scheduler_features", "with_verify_step"):
        f = fits.get(name)
        if f:
            extra = ""
            if "verify_step_s" in f:
                extra = f", verify step {f['verify_step_s'] * 1e3:.3f} ms"
            console.print(
                f"fit ({name}): base {f['base_s'] * 1e3:.3f} ms, per decode "
                f"{f['per_decode_s'] * 1e6:.1f} us, per draft token "
                f"{f['per_draft_token_s'] * 1e6:.1f} us{extra} (rms {f['rms_s'] * 1e3:.3f} ms)"
            )
    per_b = [
        f"B={b}: {f['per_draft_token_s'] * 1e6:.1f}"
        for b, f in fits["per_batch"].items()
        if f is not None
    ]
    if per_b:
        console.print("per draft token, us, by batch (k >= 1): " + ", ".join(per_b))
    verdicts = a["tier_verdicts"]
    for acc in a["acceptance"]["rates"]:
        rate = acc["rate"]
        t = Table(title=f"best depth at acceptance {rate} ({acc['label']})")
        for col in ("batch", "k*", "E(k*)", "step ms", "tok/s/user", "tok/s", "vs k=0", "tiers"):
            t.add_column(col, justify="right")
        for c in a["best_depth"]:
            if c["acceptance"] != rate:
                continue
            plain = c["plain_tokens_per_s_per_user"]
            met = [
                v["tier"]
                for v in verdicts
                if v["acceptance"] == rate and c["batch"] in v["batches"]
            ]
            t.add_row(
                str(c["batch"]),
                str(c["depth"]),
                f"{c['expected_tokens']:.2f}",
                f"{c['step_s'] * 1e3:.2f}",
                f"{c['tokens_per_s_per_user']:.0f}",
                f"{c['tokens_per_s']:.0f}",
                f"{c['tokens_per_s_per_user'] / plain:.2f}x" if plain else "-",
                ", ".join(met) or "-",
            )
        console.print(t)
    tiers = a["tiers"]
    measured = sorted(step_s)
    t = Table(title=f"batches where each tier's promise holds ({tiers['preset']} preset)")
    t.add_column("tier")
    t.add_column("tok/s/user", justify="right")
    columns: list[float | None] = [None, *(acc["rate"] for acc in a["acceptance"]["rates"])]
    for rate in columns:
        t.add_column("k=0" if rate is None else f"a={rate}", justify="right")
    for name in dict.fromkeys(v["tier"] for v in verdicts):
        mine = {v["acceptance"]: v for v in verdicts if v["tier"] == name}
        cells = []
        for rate in columns:
            v = mine.get(rate)
            cells.append("" if v is None else _batches_text(v["batches"], measured))
        promise = next(iter(mine.values()))["tokens_per_s"]
        t.add_row(name, f"{promise:.0f}", *cells)
    console.print(t)


def _batches_text(ok: list[int], measured: list[int]) -> str:
    """'<= B' when the promise holds at every measured batch up to B, else the list."""
    if not ok:
        return "none"
    if ok == measured[: len(ok)]:
        return f"<= {ok[-1]}"
    return ", ".join(map(str, ok))


def plot(report: dict[str, Any], path: Path) -> str | None:
    """A small PNG: step time by depth per batch, speed per user by batch; None, or why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed here: no plot"
    m, a = report["measurement"], report["analysis"]
    step_s = {int(b): {int(k): s for k, s in by_k.items()} for b, by_k in m["step_s"].items()}
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for b in sorted(step_s):
        ks = sorted(step_s[b])
        left.plot(ks, [step_s[b][k] * 1e3 for k in ks], marker="o", ms=3, label=f"B={b}")
    left.set(xlabel="draft tokens verified per sequence (k)", ylabel="step ms")
    left.set_title(f"verify step, context ~{m['context']}", fontsize=10)
    left.legend(fontsize=7)
    batches = sorted(step_s)
    plain = [1.0 / step_s[b][0] for b in batches if 0 in step_s[b]]
    if len(plain) == len(batches):
        right.plot(batches, plain, marker="o", ms=3, color="black", label="k=0")
    for acc in a["acceptance"]["rates"]:
        rows = [c for c in a["best_depth"] if c["acceptance"] == acc["rate"]]
        right.plot(
            [c["batch"] for c in rows],
            [c["tokens_per_s_per_user"] for c in rows],
            marker="o",
            ms=3,
            label=f"a={acc['rate']}, best k",
        )
    seen = set()
    for v in a["tier_verdicts"]:
        if v["tier"] not in seen:
            seen.add(v["tier"])
            right.axhline(v["tokens_per_s"], ls=":", lw=0.8, color="gray")
            right.annotate(v["tier"], (batches[0], v["tokens_per_s"]), fontsize=7, color="gray")
    right.set_xscale("log", base=2)
    right.set(xlabel="batch", ylabel="tokens/s per user")
    right.set_title("best uniform depth per batch", fontsize=10)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return None


def write_report(report: dict[str, Any], out: Path, with_plot: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if with_plot and report["measurement"]["points"]:
        why_not = plot(report, out / PNG_NAME)
        report["plot"] = PNG_NAME if why_not is None else {"skipped": why_not}
    (out / JSON_NAME).write_text(json.dumps(report, indent=2))


# ---- command line ---------------------------------------------------------------------------


def _ints(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(",") if v.strip())
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0, got {text!r}")
    return values


def build_engine(args: argparse.Namespace, opts: SweepOptions) -> Engine:
    """The engine as `bench engine --random-weights` builds it, sized for this sweep: one
    sequence slot per sequence, a context just long enough (so graph tables stay small)."""
    config = EngineConfig(
        device=args.device,
        dtype=args.dtype,
        max_num_seqs=max(opts.batches),
        max_model_len=opts.context + 1 + max(opts.depths),
        cuda_graphs=not args.eager,
        seed=opts.seed,
    )
    return Engine.from_random_weights(args.random_weights, config)


def _environment(engine: Engine) -> dict[str, Any]:
    from tokenfactory.bench.engine_bench import engine_description, machine_description

    return {
        "model": engine.model_name,
        "device": str(engine.device),
        "machine": machine_description(engine),
        "dtype": str(engine.dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "engine": engine_description(engine),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "spec-verify-out")))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--random-weights", default="llama-3.1-8b", help="architecture name")
    ap.add_argument("--batches", type=_ints, default=SweepOptions.batches)
    ap.add_argument("--depths", type=_ints, default=SweepOptions.depths)
    ap.add_argument("--context", type=int, default=SweepOptions.context)
    ap.add_argument("--warmup", type=int, default=SweepOptions.warmup)
    ap.add_argument("--reps", type=int, default=SweepOptions.reps)
    ap.add_argument("--budget-s", type=float, default=None, help="stop starting new batches")
    ap.add_argument("--eager", action="store_true", help="no CUDA graphs for k=0 steps")
    ap.add_argument(
        "--acceptance",
        default=None,
        help="rates to plan with: 0.6,0.8 or a JSON file (default: "
        + ", ".join(map(str, DEFAULT_ACCEPTANCE))
        + ", assumed)",
    )
    ap.add_argument("--tiers", default=None, help="tiers TOML (default: the shipped one)")
    ap.add_argument("--tiers-preset", default=None, help="default: gpu on cuda, else cpu")
    ap.add_argument("--table", type=Path, default=None, help="analyse an earlier JSON instead")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    start = time.monotonic()
    console = Console(stderr=True)
    acceptances = parse_acceptance(args.acceptance)
    old = json.loads(args.table.read_text()) if args.table is not None else None
    device = str(old.get("device", args.device)) if old is not None else args.device
    preset = args.tiers_preset or ("gpu" if device.startswith("cuda") else "cpu")
    catalog = load_tiers(args.tiers, preset)

    if old is not None:
        again = {k: v for k, v in old.items() if k not in ("analysis", "plot")}
        again["analysis"] = analyse(table_from_json(old), acceptances, catalog)
        write_report(again, args.out, not args.no_plot)
        render(again, Console(width=120))
        return 0

    opts = SweepOptions(
        batches=tuple(sorted(set(args.batches))),
        depths=tuple(sorted(set(args.depths))),
        context=args.context,
        warmup=args.warmup,
        reps=args.reps,
        budget_s=args.budget_s,
    )
    engine = build_engine(args, opts)
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m tokenfactory.bench.spec_verify_cost "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        **_environment(engine),
        "options": asdict(opts),
        "timed": "runner.execute + sampler over every row, synchronised; median of reps",
        "init_s": time.monotonic() - start,
    }
    console.print(
        f"{engine.model_name} on {report['machine']} ({report['dtype']}), "
        f"attention {report['engine']['attention_backend']}, "
        f"init {report['init_s']:.1f} s"
    )

    def save(table: StepTable) -> None:
        report["measurement"] = table_json(table)
        report["analysis"] = analyse(table, acceptances, catalog)
        report["elapsed_s"] = time.monotonic() - start
        write_report(report, args.out, with_plot=False)  # the plot once, at the end

    table = measure(engine, opts, start=start, on_batch=save, console=console)
    save(table)
    write_report(report, args.out, not args.no_plot)
    render(report, Console(width=120))
    console.print(f"done in {time.monotonic() - start:.0f} s: {args.out / JSON_NAME}")
    return 0 if table.points and not table.errors else 1


if __name__ == "__main__":
    sys.exit(main())
