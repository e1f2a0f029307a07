"""An offline run as the planner's model sees it: every request queued at once, steps taken
until the last finishes, to set beside `tokenfactory bench engine`'s offline figure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenfactory.planner.frontier import Machine
from tokenfactory.planner.perf_model import StepWork, step_seconds


@dataclass(frozen=True)
class OfflineEstimate:
    steps: int
    elapsed_s: float
    output_tokens: int

    @property
    def output_tokens_per_s(self) -> float:
        return self.output_tokens / self.elapsed_s


def offline_run(
    machine: Machine,
    requests: Sequence[tuple[int, int]],
    max_num_seqs: int = 256,
    token_budget: int = 2048,
) -> OfflineEstimate:
    """(prompt, output) lengths, admitted in order while sequences and the step's token budget
    allow; a prompt may be split over steps (chunked prefill), as the engine does."""
    waiting = [[p, o] for p, o in requests]  # prompt tokens left, output tokens left
    running: list[list[int]] = []  # [context so far, output tokens left]
    prefilling: list[list[int]] = []  # [prompt tokens left, prompt length, output tokens]
    elapsed, steps, produced = 0.0, 0, 0
    while waiting or running or prefilling:
        decodes = len(running)
        budget = token_budget - decodes
        prompt_tokens = 0
        while budget > 0 and (prefilling or waiting):
            if not prefilling:
                if len(running) + len(prefilling) >= max_num_seqs:
                    break
                p, o = waiting.pop(0)
                prefilling.append([p, p, o])
            chunk = min(budget, prefilling[0][0])
            prefilling[0][0] -= chunk
            prompt_tokens += chunk
            budget -= chunk
            if prefilling[0][0] == 0:
                _, p, o = prefilling.pop(0)
                running.append([p, o])  # its first token comes with this step
                produced += 1
                running[-1][1] -= 1
        context = sum(r[0] for r in running) / decodes if decodes else 0.0
        work = StepWork(decodes, context, prompt_tokens)
        elapsed += step_seconds(machine.shape, machine.peak, machine.hardware.params, work)
        steps += 1
        for r in running[:decodes]:
            r[0] += 1
            r[1] -= 1
            produced += 1
        running = [r for r in running if r[1] > 0]
    return OfflineEstimate(steps, elapsed, produced)
