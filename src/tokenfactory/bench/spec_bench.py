"""The speculation part of `tokenfactory bench engine`: the same greedy requests with
speculative decoding off and on, on the chat and agent workloads, at several batch sizes. A
cell runs every prompt of its workload, in rounds of `batch` requests at once.

The engines share one loaded model (and the proposer the engine was built with); in each cell
they run the same requests in lockstep, one step of each in turn, so load from elsewhere on
the machine (or clocks that drift) falls on both sides of a comparison alike. Every run starts
with an empty prefix cache and a fresh scheduling policy, as a newly started engine would. Greedy
speculation must not change a single token: any difference is reported as a mismatch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tokenfactory.bench.spec_workloads import WORKLOADS, load_workload
from tokenfactory.engine.engine import Engine
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.engine.speculation.factory import make_proposer
from tokenfactory.engine.speculation.ngram import NgramProposer, lookup
from tokenfactory.engine.speculation.proposer import Proposer
from tokenfactory.scheduling.step_stats import StepStats


@dataclass
class SpecBenchOptions:
    workloads: list[str] = field(default_factory=lambda: list(WORKLOADS))
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    max_tokens: int = 128
    # Each warm-up run generates this many tokens per workload prompt before timing starts
    # (kernels, allocators and the draft path's shapes are built outside the timed runs).
    warmup_tokens: int = 8


@dataclass
class RunStats:
    """One timed run: a batch of requests from arrival to the last one finishing."""

    elapsed_s: float
    output_tokens: int
    steps: int
    decode_steps: int  # steps that decoded at least one request
    decode_tokens: int  # decoding requests summed over steps (one token each without drafts)
    draft_tokens: int  # draft tokens verified
    accepted_tokens: int  # of them accepted
    decode_only_s: float  # time in steps with no prompt tokens
    decode_only_tokens: int  # tokens those steps emitted

    @property
    def output_tokens_per_s(self) -> float:
        return self.output_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_only_tokens / self.decode_only_s if self.decode_only_s > 0 else 0.0

    @property
    def acceptance(self) -> float | None:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else None

    @property
    def tokens_per_step(self) -> float:
        """Tokens a decoding request gains per step: 1 plus its accepted draft tokens."""
        if not self.decode_tokens:
            return 0.0
        return (self.decode_tokens + self.accepted_tokens) / self.decode_tokens

    @property
    def drafts_per_decode(self) -> float:
        """Draft tokens verified per decoding request and step (the depth the policy chose)."""
        return self.draft_tokens / self.decode_tokens if self.decode_tokens else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "output_tokens_per_s": self.output_tokens_per_s,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "acceptance": self.acceptance,
            "tokens_per_step": self.tokens_per_step,
            "drafts_per_decode": self.drafts_per_decode,
        }


@dataclass(frozen=True)
class Mismatch:
    """A request whose speculative output differs from the baseline's."""

    prompt: str
    index: int  # position in the batch
    first_difference: int  # first output position that differs
    baseline_tokens: int
    speculative_tokens: int


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first position where a and b differ (a length difference counts); None if equal."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def compare_outputs(
    names: list[str], baseline: list[list[int]], speculative: list[list[int]]
) -> list[Mismatch]:
    out = []
    for i, (name, a, b) in enumerate(zip(names, baseline, speculative, strict=True)):
        diff = first_difference(a, b)
        if diff is not None:
            out.append(Mismatch(name, i, diff, len(a), len(b)))
    return out


def lockstep_run(
    engines: list[Engine], prompts: list[list[int]], max_tokens: int
) -> list[tuple[RunStats, list[list[int]]]]:
    """Run `prompts` greedily on every engine at once, one step of each in turn, so load from
    elsewhere on the machine falls on all of them alike. Each engine's time is the time of
    its own steps (from arrival to its last request finishing, less the other engines' steps);
    its figures and each output, per engine."""
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    ids: list[list[str]] = []
    before: list[int] = []
    for e in engines:
        e.use_policy(e.config.policy)  # empty prefix cache, policy from its prior
        before.append(e.stats.total_steps)
        ids.append([e.add_request(p, params) for p in prompts])
    tokens: list[dict[str, list[int]]] = [{r: [] for r in rids} for rids in ids]
    busy = [0.0] * len(engines)
    while any(e.has_unfinished() for e in engines):
        for i, e in enumerate(engines):
            if not e.has_unfinished():
                continue
            t0 = time.perf_counter()
            outs = e.step()
            busy[i] += time.perf_counter() - t0
            for out in outs:
                tokens[i][out.request_id] += out.token_ids
    results = []
    for i, e in enumerate(engines):
        steps = e.stats.recent(e.stats.total_steps - before[i])
        outputs = [tokens[i][r] for r in ids[i]]
        results.append((run_stats(steps, busy[i], outputs), outputs))
    return results


def run_stats(steps: list[StepStats], elapsed_s: float, outputs: list[list[int]]) -> RunStats:
    decoding = [s for s in steps if s.num_decode_tokens]
    pure = [s for s in decoding if not s.num_prefill_tokens]
    return RunStats(
        elapsed_s=elapsed_s,
        output_tokens=sum(len(o) for o in outputs),
        steps=len(steps),
        decode_steps=len(decoding),
        decode_tokens=sum(s.num_decode_tokens for s in decoding),
        draft_tokens=sum(s.num_draft_tokens for s in steps),
        accepted_tokens=sum(s.num_accepted_tokens for s in steps),
        decode_only_s=sum(s.duration_s for s in pure),
        decode_only_tokens=sum(s.num_decode_tokens + s.num_accepted_tokens for s in pure),
    )


def speculation_engines(engine: Engine) -> tuple[Engine, dict[str, Engine]]:
    """A baseline engine without speculation and one engine per proposer the configuration
    names (its `speculation`, and `draft` too when a draft model is given beside ngram), all
    on `engine`'s loaded model with as many KV blocks."""
    cfg = replace(engine.config, num_kv_blocks=engine.num_kv_blocks)
    names = [cfg.speculation] if cfg.speculation else []
    if cfg.draft_model and "draft" not in names:
        names.append("draft")
    if not names:
        raise ValueError("speculation is off in this engine's configuration")

    def make(name: str | None, proposer: Proposer | None) -> Engine:
        return Engine(
            engine.model,
            engine.tokenizer,
            replace(cfg, speculation=name),
            model_name=engine.model_name,
            proposer=proposer,
        )

    baseline = make(None, None)
    engines = {}
    for name in names:
        # The engine's own proposer when it matches (a draft model is loaded once).
        own = (
            engine.proposer
            if engine.proposer is not None and engine.proposer.name == name
            else None
        )
        proposer = own or make_proposer(
            replace(cfg, speculation=name), engine.model, engine.num_kv_blocks
        )
        engines[name] = make(name, proposer)
    return baseline, engines


PromptSource = Callable[[str], tuple[list[list[int]], list[str]]]


def workload_prompts(engine: Engine) -> PromptSource:
    """workload -> its prompts as token ids under the model's chat template, and their names."""
    assert engine.tokenizer is not None
    tokenizer = engine.tokenizer

    def source(workload: str) -> tuple[list[list[int]], list[str]]:
        items = load_workload(workload)
        ids = [tokenizer.encode(engine.chat_prompt(p.messages)) for p in items]
        return ids, [p.name for p in items]

    return source


def cell_rounds(num_prompts: int, batch: int) -> list[list[int]]:
    """The prompt indices a cell runs, in rounds of `batch` requests at once: every prompt of
    the workload at least once (a batch-1 cell is the whole workload one request at a time,
    not its first prompt), the prompts in turn and repeated to fill the last round."""
    if num_prompts < 1 or batch < 1:
        raise ValueError("need at least one prompt and a batch of at least one")
    rounds = -(-num_prompts // batch)
    order = [i % num_prompts for i in range(rounds * batch)]
    return [order[r * batch : (r + 1) * batch] for r in range(rounds)]


def combine_runs(runs: list[RunStats]) -> RunStats:
    """Rounds run one after another, as one run: their times and counts added."""
    return RunStats(
        **{f.name: sum(getattr(r, f.name) for r in runs) for f in fields(RunStats)}
    )


@dataclass(frozen=True)
class LookupPotential:
    """What prompt lookup could do on an output if every step drafted `k` tokens: found
    offline from the baseline's tokens, whatever depth the policy chose in the live run."""

    drafted: int
    accepted: int
    steps: int  # decode steps the output would take
    tokens: int  # tokens those steps emit

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None

    @property
    def tokens_per_step(self) -> float:
        return self.tokens / self.steps if self.steps else 0.0


def lookup_potential(
    prompts: list[list[int]],
    outputs: list[list[int]],
    k: int,
    k_after_full: int | None = None,
) -> LookupPotential:
    """Replay each output step by step with an n-gram draft of up to k tokens (the proposer's
    own lookup), keeping the drafted tokens the output really continues with. With
    `k_after_full`, a step right after one whose whole draft was accepted drafts up to that
    many instead (a depth rule that follows the last step's outcome)."""
    ngram = NgramProposer()
    drafted = accepted = steps = tokens = 0
    for prompt, output in zip(prompts, outputs, strict=True):
        t = 1  # the first output token comes from the prompt's step
        full = False  # the last step's draft was accepted whole
        while t < len(output):
            depth = k_after_full if full and k_after_full is not None else k
            context = prompt + output[:t]
            draft = lookup(context, min(depth, len(output) - t - 1), ngram.max_n, ngram.min_n)
            a = 0
            while a < len(draft) and draft[a] == output[t + a]:
                a += 1
            drafted += len(draft)
            accepted += a
            steps += 1
            tokens += a + 1
            t += a + 1
            full = bool(draft) and a == len(draft)
    return LookupPotential(drafted, accepted, steps, tokens)


def run_speculation_bench(
    engine: Engine,
    opts: SpecBenchOptions,
    console: Console,
    on_cell: Callable[[dict[str, Any]], None] | None = None,
    prompts: PromptSource | None = None,
) -> dict[str, Any]:
    """Every workload x batch size x proposer, baseline first in each cell. `on_cell` gets
    the result so far after each cell (for partial JSON when a run is cut short); `prompts`
    replaces the shipped workloads (the default needs the model's tokenizer)."""
    if prompts is None:
        if engine.tokenizer is None:
            raise ValueError("the workloads are chat prompts: the model needs a tokenizer")
        prompts = workload_prompts(engine)
    baseline, spec = speculation_engines(engine)
    result: dict[str, Any] = {
        "proposers": list(spec),
        "num_speculative_tokens": engine.config.num_speculative_tokens,
        "draft_model": engine.config.draft_model,
        "policy": engine.config.policy,
        "max_tokens": opts.max_tokens,
        "order": "per cell: baseline and every proposer in lockstep, one step of each in turn",
        "cells": [],
        "mismatches": 0,
    }
    all_prompts = {workload: prompts(workload) for workload in opts.workloads}
    with console.status("speculation: warming up..."):
        for workload in opts.workloads:
            warm, _ = all_prompts[workload]
            lockstep_run([baseline, *spec.values()], warm, opts.warmup_tokens)
    total = len(opts.workloads) * len(opts.batch_sizes)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} cells"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    with progress:
        task = progress.add_task("speculation", total=total)
        for workload in opts.workloads:
            for batch in opts.batch_sizes:
                progress.update(task, description=f"{workload} batch {batch}")
                ids, names, runs = run_cell(
                    [baseline, *spec.values()], all_prompts[workload], batch, opts.max_tokens
                )
                progress.advance(task)
                base, base_tokens = runs[0]
                potential = lookup_potential(ids, base_tokens, result["num_speculative_tokens"])
                for name, (stats, tokens) in zip(spec, runs[1:], strict=True):
                    mismatches = compare_outputs(names, base_tokens, tokens)
                    if mismatches:
                        result["mismatches"] += len(mismatches)
                        m = mismatches[0]
                        progress.console.print(
                            f"[bold red]MISMATCH[/bold red] {workload} batch {batch} {name}: "
                            f"{len(mismatches)}/{batch} outputs differ from the baseline "
                            f"(first: {m.prompt!r} at token {m.first_difference})"
                        )
                    result["cells"].append(
                        cell_result(
                            workload, batch, len(ids), name, base, stats, mismatches, potential
                        )
                    )
                if on_cell:
                    on_cell(result)
    # Wide enough for every column even when stderr is a file (rich would fold to 80).
    wide = Console(
        file=console.file,
        width=max(console.width, 180),
        no_color=console.no_color,
        quiet=console.quiet,
    )
    wide.print(speculation_table(result))
    if result["mismatches"]:
        console.print(
            f"[bold red]{result['mismatches']} speculative outputs differ from the baseline: "
            "greedy speculation should be token for token identical[/bold red]"
        )
    else:
        console.print("greedy outputs identical with speculation on and off in every cell")
    return result


def run_cell(
    engines: list[Engine],
    workload: tuple[list[list[int]], list[str]],
    batch: int,
    max_tokens: int,
) -> tuple[list[list[int]], list[str], list[tuple[RunStats, list[list[int]]]]]:
    """One cell: the workload's prompts in rounds of `batch` (`cell_rounds`), each round in
    lockstep on every engine. The prompts and names in the order run, and per engine its
    rounds combined and its outputs in that order."""
    prompt_ids, prompt_names = workload
    ids: list[list[int]] = []
    names: list[str] = []
    stats: list[list[RunStats]] = [[] for _ in engines]
    outputs: list[list[list[int]]] = [[] for _ in engines]
    for chosen in cell_rounds(len(prompt_ids), batch):
        ids += [prompt_ids[i] for i in chosen]
        names += [prompt_names[i] for i in chosen]
        for i, (run, tokens) in enumerate(lockstep_run(engines, ids[-batch:], max_tokens)):
            stats[i].append(run)
            outputs[i] += tokens
    return ids, names, [(combine_runs(s), o) for s, o in zip(stats, outputs, strict=True)]


def cell_result(
    workload: str,
    batch: int,
    requests: int,
    proposer: str,
    base: RunStats,
    spec: RunStats,
    mismatches: list[Mismatch],
    potential: LookupPotential,
) -> dict[str, Any]:
    return {
        "workload": workload,
        "batch": batch,
        "requests": requests,  # in rounds of `batch`: the whole workload at least once
        "proposer": proposer,
        "baseline": base.to_dict(),
        "speculative": spec.to_dict(),
        "speedup": spec.output_tokens_per_s / base.output_tokens_per_s
        if base.output_tokens_per_s
        else None,
        "decode_speedup": spec.decode_tokens_per_s / base.decode_tokens_per_s
        if base.decode_tokens_per_s
        else None,
        "identical": not mismatches,
        "mismatches": [asdict(m) for m in mismatches],
        "ngram_potential": asdict(potential)
        | {"acceptance": potential.acceptance, "tokens_per_step": potential.tokens_per_step},
    }


def speculation_table(result: dict[str, Any]) -> Table:
    table = Table(
        title=f"speculative decoding (greedy, max_tokens {result['max_tokens']}, "
        f"up to {result['num_speculative_tokens']} draft tokens)"
    )
    for col in (
        "workload",
        "batch",
        "proposer",
        "acceptance",
        "drafts/decode",
        "tokens/step",
        "lookup acc @k",
        "lookup tok/step @k",
        "off tok/s",
        "on tok/s",
        "speedup",
        "decode speedup",
        "identical",
    ):
        table.add_column(col, justify="left" if col in ("workload", "proposer") else "right")
    for c in result["cells"]:
        s, b, pot = c["speculative"], c["baseline"], c["ngram_potential"]
        acc = s["acceptance"]
        table.add_row(
            c["workload"],
            str(c["batch"]),
            c["proposer"],
            "-" if acc is None else f"{acc:.0%}",
            f"{s['drafts_per_decode']:.2f}",
            f"{s['tokens_per_step']:.2f}",
            "-" if pot["acceptance"] is None else f"{pot['acceptance']:.0%}",
            f"{pot['tokens_per_step']:.2f}",
            f"{b['output_tokens_per_s']:.1f}",
            f"{s['output_tokens_per_s']:.1f}",
            "-" if c["speedup"] is None else f"{c['speedup']:.2f}x",
            "-" if c["decode_speedup"] is None else f"{c['decode_speedup']:.2f}x",
            "yes" if c["identical"] else f"[bold red]NO ({len(c['mismatches'])})[/bold red]",
        )
    return table
