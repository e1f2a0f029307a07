"""The step-time model as the simulator and the tier policy take it: a line
(scheduling/step_model.py `StepCoefficients`) fitted to the roofline model over the steps a
plan runs, so the simulator's clock follows the planner's model of the chip."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tokenfactory.planner.frontier import Machine, Workload, batch_grid
from tokenfactory.planner.perf_model import StepWork, step_seconds
from tokenfactory.scheduling.step_model import StepCoefficients


@dataclass(frozen=True)
class LinearFit:
    cost: StepCoefficients
    median_error: float  # |line / model - 1| over the grid it was fitted on
    worst_error: float


def linear_step_costs(machine: Machine, load: Workload, max_batch: int) -> LinearFit:
    """Fit base, per-decode, per-prompt-token, per-KV-token, mixed-step and per-draft costs
    to the model's step times over batches up to `max_batch`, contexts around the workload's,
    prompt chunks up to the chunk size and drafts of none or two a sequence (each step
    weighted by its own time: relative error)."""
    from scipy.optimize import nnls  # the plan extra

    rows, times = [], []
    ctx = load.mean_context
    for batch in batch_grid(max(1, max_batch)):
        for context in (0.25 * ctx, ctx, 2 * ctx):
            for prompt in (0.0, load.prefill_chunk / 8, load.prefill_chunk):
                for drafts in (0, 2 * batch):
                    work = StepWork(batch, context, prompt, drafts, load.input_tokens / 2)
                    t = step_seconds(machine.shape, machine.peak, machine.hardware.params, work)
                    rows.append(
                        [1.0, batch, prompt, batch * context, 1.0 if prompt else 0.0, drafts]
                    )
                    times.append(t)
    a, y = np.array(rows), np.array(times)
    coef, _ = nnls(a / y[:, None], np.ones_like(y))
    ratio = (a @ coef) / y - 1
    cost = StepCoefficients(
        base_s=float(max(coef[0], 1e-6)),
        per_decode_s=float(coef[1]),
        per_prefill_token_s=float(coef[2]),
        per_kv_token_s=float(coef[3]),
        prefill_step_s=float(coef[4]),
        per_draft_token_s=float(coef[5]),
    )
    return LinearFit(cost, float(np.median(np.abs(ratio))), float(np.max(np.abs(ratio))))
