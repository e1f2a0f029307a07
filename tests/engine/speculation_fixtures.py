"""Speculation in tests: a policy that always grants drafts, and a proposer that knows the
answer (and lies on purpose), so accepted and rejected drafts are both exercised."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tokenfactory.engine.engine import Engine
from tokenfactory.engine.speculation.proposer import DraftRequest
from tokenfactory.scheduling.fcfs import FcfsPolicy
from tokenfactory.scheduling.view import SchedulerView, StepPlan


class AlwaysSpeculate(FcfsPolicy):
    """fcfs, with every decoding request granted `depth` draft tokens each step."""

    def __init__(self, depth: int):
        super().__init__()
        self.depth = depth

    def plan(self, view: SchedulerView) -> StepPlan:
        plan = super().plan(view)
        drafts = {r.request_id: self.depth for r in view.running if not r.is_prefill}
        return StepPlan(
            run=plan.run,
            admit=plan.admit,
            preempt_order=plan.preempt_order,
            draft_tokens=drafts,
        )


class ScriptedProposer:
    """Proposes the continuation a reference run produced (by prompt), with every
    `wrong_every`-th draft token replaced by a wrong one."""

    name = "scripted"

    def __init__(self, answers: Mapping[tuple[int, ...], list[int]], wrong_every: int = 3):
        self.answers = answers
        self.wrong_every = wrong_every
        self.drafted = 0

    def propose(self, requests: list[DraftRequest]) -> Mapping[str, list[int]]:
        out = {}
        for r in requests:
            answer = self.answers.get(tuple(r.seq.prompt_token_ids), [])
            done = r.seq.num_output_tokens
            draft = list(answer[done : done + r.max_tokens])
            for i in range(len(draft)):
                self.drafted += 1
                if self.wrong_every and self.drafted % self.wrong_every == 0:
                    draft[i] = draft[i] % 500 + 1  # any other token
            out[r.seq.request_id] = draft
        return out

    def retain(self, live_request_ids: Iterable[str]) -> None:
        pass


def speculate(engine: Engine, depth: int) -> Engine:
    """Put `engine` under AlwaysSpeculate(depth) with its proposer enabled."""
    engine.scheduler.policy = AlwaysSpeculate(depth)
    engine.scheduler.max_draft_tokens = depth
    return engine
