"""How often speculative draft tokens are accepted, and what a draft of k tokens is worth.

A draft token is accepted when the target model would have produced it itself; the first
rejected one ends the draft (its replacement is the step's last token). With an acceptance
rate a, taken as independent per token, a step that verifies k draft tokens emits
1 + a + a^2 + ... + a^k tokens on average (`expected_tokens`).
"""

from __future__ import annotations

from dataclasses import dataclass


def expected_tokens(acceptance: float, k: int) -> float:
    """Tokens a step emits on average when it verifies k draft tokens."""
    a = min(max(acceptance, 0.0), 1.0)
    if a >= 1.0:
        return float(k + 1)
    return (1.0 - a ** (k + 1)) / (1.0 - a)


def request_acceptance(
    num_draft: int, num_accepted: int, prior: float, prior_weight: float = 8.0
) -> float:
    """A request's acceptance rate: its own record, pulled toward `prior` (the engine-wide
    rate) by `prior_weight` pseudo-tokens, so a few lucky or unlucky tokens do not swing it."""
    return (num_accepted + prior * prior_weight) / (num_draft + prior_weight)


DEFAULT_ACCEPTANCE = 0.5  # assumed before any draft token was verified


@dataclass
class AcceptanceRate:
    """The engine-wide share of draft tokens accepted, decayed so it follows the workload:
    each observation first discounts the past by `decay`. It is pulled toward
    DEFAULT_ACCEPTANCE by `prior_weight` pseudo-tokens, so one unlucky draft does not set it
    to zero (which would stop every request from drafting again)."""

    decay: float = 0.98
    prior_weight: float = 16.0
    drafted: float = 0.0
    accepted: float = 0.0

    def observe(self, num_draft: int, num_accepted: int) -> None:
        self.drafted = self.drafted * self.decay + num_draft
        self.accepted = self.accepted * self.decay + num_accepted

    @property
    def rate(self) -> float | None:
        """None before any draft token was verified."""
        if self.drafted <= 0:
            return None
        w = self.prior_weight
        return (self.accepted + DEFAULT_ACCEPTANCE * w) / (self.drafted + w)
