"""Step-time model: how long an engine step takes, fitted online from measured steps.

    step_s ~ a + b * decode_seqs + c * prefill_tokens + d * kv_tokens_read + e * [prefill > 0]
             + f * draft_tokens

Least squares over a sliding window of recent steps, regularised toward a prior so that the
model is usable before any data and never swings wildly on a handful of similar steps (a
ridge pull toward the prior, worth `prior_weight` pseudo-steps per coefficient). The window's
normal equations are kept incrementally, so an observation costs O(1) and a refit solves a
6x6 system. Coefficients are clipped to be non-negative: more work never makes a step faster.

Plain Python and numpy over plain numbers: the tier policy, /v1/tiers and the planner's
simulator all use the same class.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

# 1, decode sequences, prefill tokens, KV tokens read, any prefill, draft tokens verified
NUM_FEATURES = 6


@dataclass(frozen=True)
class StepCoefficients:
    base_s: float  # a: fixed cost per step (launch, sampling, Python)
    per_decode_s: float  # b: per decoding sequence (weights are read once, so this is small)
    per_prefill_token_s: float  # c: per prompt token computed
    per_kv_token_s: float  # d: per K/V token attended over
    # e: what a step pays once for computing any prompt tokens: decode-only steps take a
    # faster path (the skinny CPU kernels, CUDA graphs), mixed steps the general one.
    prefill_step_s: float = 0.0
    # f: per speculative draft token verified (a row beside its decode's). None: taken to
    # cost what a prompt token does until steps say otherwise.
    per_draft_token_s: float | None = None

    @property
    def draft_token_s(self) -> float:
        draft = self.per_draft_token_s
        return self.per_prefill_token_s if draft is None else draft

    def as_array(self) -> np.ndarray:
        return np.array(
            [
                self.base_s,
                self.per_decode_s,
                self.per_prefill_token_s,
                self.per_kv_token_s,
                self.prefill_step_s,
                self.draft_token_s,
            ]
        )

    def predict(
        self, decode_seqs: float, prefill_tokens: float, kv_tokens: float, draft_tokens: float = 0
    ) -> float:
        return (
            self.base_s
            + self.per_decode_s * decode_seqs
            + self.per_prefill_token_s * prefill_tokens
            + self.per_kv_token_s * kv_tokens
            + (self.prefill_step_s if prefill_tokens > 0 else 0.0)
            + self.draft_token_s * draft_tokens
        )


# Typical feature sizes, used to scale the prior's pull so it is comparable across features.
# Draft tokens: a step verifies a few (one request at batch 1), so a typical size of 4 keeps
# the prior's pull from outweighing the steps that show what a draft costs.
_TYPICAL = np.array([1.0, 16.0, 256.0, 4096.0, 1.0, 4.0])


class StepTimeModel:
    """Online least-squares fit of step time over a sliding window of steps."""

    def __init__(
        self,
        prior: StepCoefficients | None = None,
        window: int = 512,
        prior_weight: float = 2.0,
        skip_first: int = 2,
        outlier_factor: float = 3.0,
        outlier_floor_s: float = 0.002,
        refit_every: int = 1,
    ):
        if window < 1:
            raise ValueError("window must be at least 1")
        if prior is None:
            from tokenfactory.scheduling.calibration import step_cost  # it imports this module

            prior = step_cost("cpu-prior")
        self.prior = prior
        self.window = window
        self.prior_weight = prior_weight
        self._skip = skip_first  # the first steps pay for warm-up, not for work
        # A step counts as at most outlier_factor x its prediction + outlier_floor_s: a pause
        # that is not work (a kernel compiled on first use, a garbage collection) would
        # otherwise dominate a least-squares fit. A model that predicts too little still
        # climbs to the truth, by up to that factor per window of steps.
        self.outlier_factor = outlier_factor
        self.outlier_floor_s = outlier_floor_s
        self.num_capped = 0
        self._rows: deque[tuple[np.ndarray, float]] = deque()
        self._xtx = np.zeros((NUM_FEATURES, NUM_FEATURES))
        self._xty = np.zeros(NUM_FEATURES)
        self._coef = prior.as_array()
        self._coef_obj: StepCoefficients | None = None
        self._dirty = False
        self.num_observed = 0
        # Refit after at least this many new steps (a refit is a small solve, but a policy
        # that plans every step of a ~10 ms CPU step feels a tenth of a millisecond).
        self.refit_every = max(1, refit_every)
        self._since_refit = 0

    @classmethod
    def from_steps(cls, steps: Iterable[Any], **kwargs: Any) -> StepTimeModel:
        """A model fitted to logged steps, e.g. `engine.stats.recent()` (for /v1/tiers, the
        planner); nothing is skipped as warm-up unless `skip_first` says so."""
        kwargs.setdefault("skip_first", 0)
        model = cls(**kwargs)
        for stats in steps:
            model.observe_step(stats)
        return model

    def set_prior(self, prior: StepCoefficients) -> None:
        """Pull toward `prior` from now on (e.g. the hardware probe's figures instead of the
        built-in CPU guess); steps already observed are kept."""
        self.prior = prior
        if self.num_observed == 0:
            self._coef = prior.as_array()
            self._coef_obj = None
        self._dirty = self.num_observed > 0

    # ---- data -------------------------------------------------------------------------------

    def observe(
        self,
        duration_s: float,
        decode_seqs: float,
        prefill_tokens: float,
        kv_tokens: float,
        draft_tokens: float = 0,
    ) -> None:
        if self._skip > 0:
            self._skip -= 1
            return
        if not duration_s > 0 or not np.isfinite(duration_s):
            return
        x = np.array(
            [
                1.0,
                decode_seqs,
                prefill_tokens,
                kv_tokens,
                1.0 if prefill_tokens > 0 else 0.0,
                draft_tokens,
            ],
            dtype=np.float64,
        )
        if self.outlier_factor > 0:
            if self._dirty:
                self._refit()
            limit = self.outlier_factor * float(self._coef @ x) + self.outlier_floor_s
            if duration_s > limit:
                duration_s = limit
                self.num_capped += 1
        self._rows.append((x, duration_s))
        self._xtx += np.outer(x, x)
        self._xty += x * duration_s
        if len(self._rows) > self.window:
            old_x, old_y = self._rows.popleft()
            self._xtx -= np.outer(old_x, old_x)
            self._xty -= old_x * old_y
        self.num_observed += 1
        self._since_refit += 1
        self._dirty = self._dirty or self._since_refit >= self.refit_every

    def observe_step(self, stats: Any) -> None:
        """Feed one engine `StepStats`."""
        self.observe(
            stats.duration_s,
            stats.num_decode_tokens,
            stats.num_prefill_tokens,
            stats.num_kv_tokens_read,
            getattr(stats, "num_draft_tokens", 0),
        )

    # ---- the fit ----------------------------------------------------------------------------

    @property
    def coefficients(self) -> StepCoefficients:
        if self.num_observed == 0:
            return self.prior  # nothing learned yet (and unset draft costs stay unset)
        if self._dirty:
            self._refit()
        # One object per fit: the policy asks for it many times a step.
        if self._coef_obj is None:
            self._coef_obj = StepCoefficients(*(float(v) for v in self._coef))
        return self._coef_obj

    def predict(
        self,
        decode_seqs: float,
        prefill_tokens: float = 0,
        kv_tokens: float = 0,
        draft_tokens: float = 0,
    ) -> float:
        if self._dirty:
            self._refit()
        c = self._coef
        return float(
            c[0]
            + c[1] * decode_seqs
            + c[2] * prefill_tokens
            + c[3] * kv_tokens
            + (c[4] if prefill_tokens > 0 else 0.0)
            + c[5] * draft_tokens
        )

    def _refit(self) -> None:
        self._dirty = False
        self._since_refit = 0
        # Ridge toward the prior: prior_weight pseudo-steps of typical size per feature.
        lam = self.prior_weight * _TYPICAL**2
        prior = self.prior.as_array()
        coef = _non_negative_solve(self._xtx + np.diag(lam), self._xty + lam * prior)
        if coef is None:
            return
        if coef[0] == 0.0 and len(self._rows) > 0:
            # Keep a floor on the fixed cost: a step is never free.
            coef[0] = min(float(prior[0]), min(y for _, y in self._rows))
        self._coef = coef
        self._coef_obj = None


def _non_negative_solve(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """Minimise the quadratic with normal equations `a x = b` over x >= 0 (active set).

    Clipping the free solution is not enough: features are collinear (KV tokens read grow
    with the decode count, prompt tokens with the any-prompt flag), and a free fit can pay for
    a negative coefficient with a too-large one elsewhere. On a GPU, whose steps barely grow
    with the batch, clipping left ~1 ms per decoding sequence against a true ~20 us. So a
    coefficient that comes out negative is fixed at zero and the rest is solved again, the
    most negative (at typical feature sizes) first.
    """
    free = list(range(len(b)))
    coef = np.zeros(len(b))
    while free:
        try:
            sol = np.linalg.solve(a[np.ix_(free, free)], b[free])
        except np.linalg.LinAlgError:
            return None
        if not np.all(np.isfinite(sol)):
            return None
        coef[:] = 0.0
        coef[free] = sol
        if sol.min() >= 0.0:
            return coef
        worst = min(range(len(free)), key=lambda k: sol[k] * _TYPICAL[free[k]])
        del free[worst]
    return coef
