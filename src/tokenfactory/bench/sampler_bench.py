"""Micro-benchmark of the sampler: `python -m tokenfactory.bench.sampler_bench`.

Times one sampler call per case on LLM-like synthetic logits: each row is a Zipf-like profile
(gap to the top token ~ s * ln(rank), s spread around what the embedded SmolLM2 model shows)
scattered over a random vocabulary order, so top-p nuclei have realistic sizes (median ~10
tokens at T=1, top_p=0.9, with a tail of rows needing hundreds). The `flat` case uses Gaussian
logits, whose nuclei hold thousands of tokens: the worst case for top-p.

Each cell is "median/min" ms over the repeats: on a shared machine the min estimates the cost
and the median what a step waits. `--baseline FILE` loads another sampler module (say, a saved
copy of an older sampler.py) and times it on the same inputs, side by side ("before/after").
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from tokenfactory.engine.sampling import sampler as current
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.engine.sequence import Sequence

# Per-case targets (ms) at batch 64 x 49152 on 2 CPU threads; "+" cases are extra over greedy.
TARGETS_MS = {
    "greedy": 2.0,
    "temperature": 8.0,
    "temperature seeded": 8.0,
    "top_k=50": 15.0,
    "top_p=0.9": 15.0,
    "top_p=0.95 T=1": 15.0,
    "top_k=50 top_p=0.9": 15.0,
    "min_p=0.05": 15.0,
    "penalties greedy": 15.0,
    "penalties T=0.8": 15.0,
    "logprobs=5 (+greedy)": 10.0,
}


def llm_like_logits(batch: int, vocab: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    log_rank = torch.arange(1, vocab + 1, dtype=torch.float32).log()
    slope = (torch.randn(batch, 1, generator=gen) * 0.28 + 0.5).exp()  # median ~1.65
    top_gap = torch.empty(batch, 1).exponential_(generator=gen)  # gap between ranks 1 and 2
    # The tail falls off faster than a pure power law, as in real models.
    gap = slope * log_rank + top_gap * (log_rank > 0) + 0.4 * (log_rank - 5.5).clamp(min=0) ** 2
    gap += 0.2 * torch.randn(batch, vocab, generator=gen)
    order = torch.rand(batch, vocab, generator=gen).argsort(dim=-1)
    return torch.empty(batch, vocab).scatter_(1, order, 10.0 - gap)


def flat_logits(batch: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * 2


def _seqs(batch: int, vocab: int, long_history: bool = False, **kw: Any) -> list[Sequence]:
    rng = random.Random(1)
    out = []
    for i in range(batch):
        prompt = [rng.randrange(vocab) for _ in range(1000)] if long_history else [1]
        output = [rng.randrange(vocab) for _ in range(200)] if long_history else []
        out.append(
            Sequence(
                request_id=str(i),
                prompt_token_ids=prompt,
                params=SamplingParams(**kw),
                output_token_ids=output,
            )
        )
    return out


def _mixed(batch: int, vocab: int) -> list[Sequence]:
    kinds: list[dict[str, Any]] = [
        {"temperature": 0.0},
        {"temperature": 0.8},
        {"temperature": 0.7, "top_p": 0.9},
        {"top_k": 40, "temperature": 0.9},
        {"min_p": 0.1},
        {"temperature": 0.8, "seed": 7},
        {"temperature": 0.0, "logprobs": 5},
        {"temperature": 1.0, "top_p": 0.95, "presence_penalty": 0.5},
    ]
    seqs = []
    for i in range(batch):
        (s,) = _seqs(1, vocab, long_history=i % 8 == 7, **kinds[i % len(kinds)])
        seqs.append(s)
    return seqs


Case = tuple[str, Callable[[int, int], torch.Tensor], Callable[[int, int], list[Sequence]]]

CASES: list[Case] = [
    ("greedy", llm_like_logits, lambda b, v: _seqs(b, v, temperature=0.0)),
    ("temperature", llm_like_logits, lambda b, v: _seqs(b, v, temperature=0.8)),
    ("temperature seeded", llm_like_logits, lambda b, v: _seqs(b, v, temperature=0.8, seed=3)),
    ("top_k=50", llm_like_logits, lambda b, v: _seqs(b, v, temperature=0.8, top_k=50)),
    ("top_p=0.9", llm_like_logits, lambda b, v: _seqs(b, v, temperature=0.8, top_p=0.9)),
    ("top_p=0.95 T=1", llm_like_logits, lambda b, v: _seqs(b, v, top_p=0.95)),
    (
        "top_k=50 top_p=0.9",
        llm_like_logits,
        lambda b, v: _seqs(b, v, temperature=0.8, top_k=50, top_p=0.9),
    ),
    ("min_p=0.05", llm_like_logits, lambda b, v: _seqs(b, v, temperature=0.8, min_p=0.05)),
    (
        "penalties greedy",
        llm_like_logits,
        lambda b, v: _seqs(
            b,
            v,
            long_history=True,
            temperature=0.0,
            repetition_penalty=1.1,
            presence_penalty=0.5,
            frequency_penalty=0.5,
        ),
    ),
    (
        "penalties T=0.8",
        llm_like_logits,
        lambda b, v: _seqs(
            b,
            v,
            long_history=True,
            temperature=0.8,
            repetition_penalty=1.1,
            presence_penalty=0.5,
            frequency_penalty=0.5,
        ),
    ),
    ("logprobs=5", llm_like_logits, lambda b, v: _seqs(b, v, temperature=0.0, logprobs=5)),
    ("mixed batch", llm_like_logits, _mixed),
    ("flat top_p=0.9 (worst)", flat_logits, lambda b, v: _seqs(b, v, top_p=0.9)),
]


def _time(fn: Callable[[], object], repeat: int, budget_s: float) -> tuple[float, float]:
    """(median, min) seconds per call; stops early once `budget_s` is spent (slow baselines).
    On a shared machine the min is the better estimate of the cost, the median of the wait."""
    fn()  # warm-up
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s and len(times) >= 3:
            break
    return statistics.median(times), min(times)


def _load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("baseline_sampler", Path(path))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run(
    batches: list[int],
    vocab: int,
    threads: int,
    repeat: int,
    baseline: ModuleType | None,
    only: list[str] | None = None,
    sampler_threads: int | None = None,
) -> None:
    torch.set_num_threads(threads)
    print(
        f"torch {torch.__version__}, {threads} threads (new sampler: {sampler_threads or threads}),"
        f" vocab {vocab}, <= {repeat} calls"
    )
    header = f"{'case':24s} {'batch':>5s} {'new med/min ms':>15s}"
    if baseline is not None:
        header += f" {'old med/min ms':>17s} {'speedup':>8s}"
    print(header + f" {'target@64':>10s}")
    for batch in batches:
        samplers = [current.Sampler(seed=0, num_threads=sampler_threads)]
        if baseline is not None:
            samplers.append(baseline.Sampler(seed=0))
        greedy_ms: list[tuple[float, ...]] = [(0.0, 0.0)] * len(samplers)
        logits_cache: dict[Callable[..., torch.Tensor], torch.Tensor] = {}
        for name, make_logits, make_seqs in CASES:
            if only and not any(o in name for o in only):
                continue
            if make_logits not in logits_cache:
                logits_cache[make_logits] = make_logits(batch, vocab)
            logits, seqs = logits_cache[make_logits], make_seqs(batch, vocab)
            ms = [
                tuple(
                    1e3 * t
                    for t in _time(functools.partial(s, logits, seqs), repeat, budget_s=3.0)
                )
                for s in samplers
            ]
            label, shown = name, list(ms)
            if name == "greedy":
                greedy_ms = ms
            if name == "logprobs=5":
                label = "logprobs=5 (+greedy)"
                shown = [(m[0] - g[0], m[1] - g[1]) for m, g in zip(ms, greedy_ms, strict=True)]
            line = f"{label:24s} {batch:5d} {shown[0][0]:8.2f}/{shown[0][1]:6.2f}"
            if baseline is not None:
                line += f" {shown[1][0]:9.2f}/{shown[1][1]:7.2f} {ms[1][0] / ms[0][0]:7.1f}x"
            target = TARGETS_MS.get(label)
            print(line + (f" {target:10.1f}" if target else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64, 256])
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--baseline", help="path of another sampler.py to compare against")
    ap.add_argument("--only", nargs="+", help="run the cases whose name contains one of these")
    ap.add_argument(
        "--sampler-threads", type=int, help="Sampler(num_threads=...) for the new sampler"
    )
    args = ap.parse_args()
    baseline = _load(args.baseline) if args.baseline else None
    run(
        args.batch,
        args.vocab,
        args.threads,
        args.repeat,
        baseline,
        args.only,
        args.sampler_threads,
    )


if __name__ == "__main__":
    main()
