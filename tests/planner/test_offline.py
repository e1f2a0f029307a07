"""The offline estimate steps through a queue the way the engine does."""

from __future__ import annotations

import pytest

from tokenfactory.planner.frontier import Machine
from tokenfactory.planner.offline import offline_run
from tokenfactory.planner.perf_model import PerfParams

from .conftest import toy_hardware


def test_one_request_takes_a_prefill_step_then_a_decode_step_per_token(shape):
    # Every step costs its fixed 1 s (the chip is otherwise instant at this size).
    chip = toy_hardware(bandwidth_gbs=1e12, base_s=1.0)
    assert chip.params == PerfParams(base_s=1.0, memory_efficiency=1.0, compute_efficiency=1.0)
    est = offline_run(Machine(shape, chip), [(10, 5)])
    assert (est.steps, est.output_tokens) == (5, 5)
    assert est.elapsed_s == pytest.approx(5.0, rel=1e-3)


def test_a_long_prompt_is_split_over_steps_and_the_batch_limit_holds(shape):
    chip = toy_hardware(bandwidth_gbs=1e12, base_s=1.0)
    # 5,000 prompt tokens in 2,048-token steps: 3 steps, the last with the first token.
    assert offline_run(Machine(shape, chip), [(5000, 1)]).steps == 3
    # Two requests, one sequence at a time: 2 x (1 prefill step + 2 decode steps).
    assert offline_run(Machine(shape, chip), [(10, 3), (10, 3)], max_num_seqs=1).steps == 6
