"""What speculative decoding adds to what this hardware can promise.

With a proposer configured, the capacity probe also runs a calibration workload (prompts
whose answers copy their context, shipped with the package) with greedy decoding and drafts
granted wherever they pay for themselves, and measures the speed one user (and a few) really
gets, the share of draft tokens accepted and the tokens each step gives a request. A tier
that plain decoding cannot serve opens on this speed, marked as relying on speculation.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

from tokenfactory.engine.engine import Engine
from tokenfactory.engine.sampling_params import SamplingParams

SPECULATIVE_BATCHES = (1, 4)
PROBE_OUTPUT_TOKENS = 64


@dataclass(frozen=True)
class SpeculativePoint:
    batch: int
    tokens_per_s_per_user: float  # from each request's first token to its last, mean
    tokens_per_step: float  # tokens a decoding request gets per step it runs in
    acceptance: float  # share of draft tokens accepted


@dataclass(frozen=True)
class SpeculativeCapacity:
    proposer: str
    workload: str
    points: list[SpeculativePoint]

    @property
    def best_speed(self) -> float:
        return max(p.tokens_per_s_per_user for p in self.points)

    @property
    def acceptance(self) -> float:
        return self.points[0].acceptance

    def max_batch_at(self, tokens_per_s: float) -> int:
        ok = [p.batch for p in self.points if p.tokens_per_s_per_user >= tokens_per_s]
        return max(ok, default=0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SpeculativeCapacity:
        return cls(d["proposer"], d["workload"], [SpeculativePoint(**p) for p in d["points"]])


def measure_speculation(
    engine: Engine, batches: tuple[int, ...] = SPECULATIVE_BATCHES
) -> SpeculativeCapacity | None:
    """Speculative decode speed on the calibration workload; None without a proposer. The
    engine must be idle, under a policy that drafts for requests without a tier (fcfs: the
    capacity probe's `probe_policy`)."""
    if engine.proposer is None:
        return None
    if engine.has_unfinished():
        raise RuntimeError("the capacity probe needs an idle engine")
    workload, prompts = calibration_prompts(engine)
    points = [
        _run(engine, [prompts[(b * 7 + i) % len(prompts)] for i in range(b)], b)
        for b in batches
        if b <= engine.config.max_num_seqs
    ]
    return SpeculativeCapacity(engine.proposer.name, workload, points)


def calibration_prompts(engine: Engine) -> tuple[str, list[list[int]]]:
    """The workload's prompts as token ids: the shipped agent workload for a model with a
    chat template, and for a tokenizer-less model token patterns that repeat (answers to
    such prompts copy them, as an agent's answers copy files)."""
    if engine.tokenizer is not None:
        from tokenfactory.bench.spec_workloads import load_workload

        tokenizer = engine.tokenizer
        prompts = [tokenizer.encode(engine.chat_prompt(p.messages)) for p in load_workload("agent")]
        return "agent", prompts
    vocab = engine.model_config.vocab_size
    patterns = [[(31 * i + 7 * j) % (vocab - 1) + 1 for j in range(24)] for i in range(8)]
    return "repeating-tokens", [p * 4 for p in patterns]


def _run(engine: Engine, prompts: list[list[int]], batch: int) -> SpeculativePoint:
    params = SamplingParams(temperature=0.0, max_tokens=PROBE_OUTPUT_TOKENS)
    # Warm-up: kernels for the verify shapes, and a first estimate of the acceptance.
    engine.generate(prompts[:1], SamplingParams(temperature=0.0, max_tokens=16))
    engine.stats.clear()
    ids = [engine.add_request(p, params) for p in prompts]
    speeds: list[float] = []
    try:
        while engine.has_unfinished():
            for out in engine.step():
                if out.finished and out.request_id in ids:
                    n = out.completion_tokens - 1
                    first, last = out.first_token_time, out.finished_time
                    if n > 0 and first is not None and last is not None and last > first:
                        speeds.append(n / (last - first))
    finally:
        for rid in ids:
            engine.abort(rid)
    steps = engine.stats.recent()
    engine.stats.clear()
    drafted = sum(s.num_draft_tokens for s in steps)
    accepted = sum(s.num_accepted_tokens for s in steps)
    decoding = [s for s in steps if s.num_prefill_tokens == 0 and s.num_decode_tokens > 0]
    per_step = sum(s.num_decode_tokens + s.num_accepted_tokens for s in decoding) / max(
        1, sum(s.num_decode_tokens for s in decoding)
    )
    return SpeculativePoint(
        batch=batch,
        tokens_per_s_per_user=statistics.fmean(speeds) if speeds else 0.0,
        tokens_per_step=per_step,
        acceptance=accepted / drafted if drafted else 0.0,
    )
