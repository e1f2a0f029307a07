"""Step costs come from the data file, with where they were measured."""

from __future__ import annotations

import pytest

from tokenfactory.scheduling.calibration import calibrations, step_cost
from tokenfactory.scheduling.step_model import StepTimeModel


def test_every_calibration_names_its_source_and_has_a_positive_step_cost():
    known = calibrations()
    assert {"cpu-prior", "embedded-cpu", "slower-cpu", "h200-llama-8b"} <= set(known)
    for cal in known.values():
        assert cal.source and cal.description
        assert cal.cost.base_s > 0
        assert min(cal.cost.as_array()) >= 0


def test_the_embedded_fit_is_the_one_measured_on_the_reference_vm():
    cal = calibrations()["embedded-cpu"]
    assert cal.commit == "4fc5f09" and cal.date.startswith("2026-11-27")
    assert cal.cost.predict(1, 0, 0) == pytest.approx(0.020 + 0.00058)


def test_a_model_without_a_prior_starts_from_the_cpu_prior():
    assert StepTimeModel().coefficients == step_cost("cpu-prior")


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown step-cost calibration 'tpu'.*embedded-cpu"):
        step_cost("tpu")
