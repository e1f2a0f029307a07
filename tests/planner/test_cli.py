"""`tokenfactory plan` as an operator meets it: the guide in --help, clear errors, files."""

from __future__ import annotations

import importlib.util
import json

import pytest
from typer.testing import CliRunner

from tokenfactory.cli import app
from tokenfactory.planner import extra

runner = CliRunner()


def test_help_reads_as_the_first_five_minutes():
    result = runner.invoke(app, ["plan", "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for step in ("plan measure", "plan frontier", "plan revenue", "plan fleet", "first five"):
        assert step in text


def test_plan_names_its_extra_when_scipy_is_missing(monkeypatch: pytest.MonkeyPatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "scipy" else real(name)
    )
    result = runner.invoke(app, ["plan", "hardware"])
    assert result.exit_code == 2
    assert "scipy" in result.output and extra.INSTALL in " ".join(result.output.split())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["frontier", "--model", "gpt-5"], "unknown model 'gpt-5'"),
        (["frontier", "--hardware", "tpu"], "unknown hardware 'tpu'"),
        (["frontier", "--weights", "int3"], "unknown weight format"),
        (["frontier", "--input-len", "lots"], "bad length"),
        (["revenue", "--demand", "gold=1"], "unknown tier 'gold'"),
        (["fleet", "--demand", "free=1", "--seeds", "x"], "--seeds"),
        (["revenue", "--demand", "free=1", "--policy", "random"], "unknown policy"),
        (["calibrate", "--sweep", "nope"], "unknown sweep"),
        (["calibrate"], "give one of"),
        (["simulate", "--rate", "1", "--mix", "gold=1"], "unknown tier 'gold'"),
        (["simulate", "--rate", "0"], "--rate must be > 0"),
    ],
)
def test_bad_input_is_a_clear_error_not_a_traceback(args, message):
    result = runner.invoke(app, ["plan", *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_local_hardware_without_a_measurement_says_what_to_run(tmp_path):
    result = runner.invoke(app, ["plan", "frontier", "--hardware", "local", "--calibration",
                                 str(tmp_path / "none.json"), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "plan measure" in result.output


def test_frontier_writes_the_plot_and_json(tmp_path):
    result = runner.invoke(app, ["plan", "frontier", "--hardware", "h100", "--model",
                                 "llama-3.1-8b", "--speculation-acceptance", "0.6", "--out",
                                 str(tmp_path)])
    assert result.exit_code == 0, result.output
    base = tmp_path / "frontier-llama-3.1-8b-h100-bf16"
    doc = json.loads((tmp_path / f"{base.name}.json").read_text())
    assert (tmp_path / f"{base.name}.png").stat().st_size > 0
    assert (tmp_path / f"{base.name}.svg").stat().st_size > 0
    assert set(doc["curves"]) == {"plain", "drafts a=0.6"}
    assert [t["tier"] for t in doc["tiers"]["plain"]] == [
        "free", "standard", "high", "ultra", "super"
    ]
    assert any(r["engine"] == "vLLM" for r in doc["references"])


def test_calibrate_reports_held_out_errors():
    result = runner.invoke(app, ["plan", "calibrate", "--sweep", "h200-llama-8b"])
    assert result.exit_code == 0, result.output
    assert "median absolute held-out error" in result.output
    assert "batch 256" in result.output


def test_simulate_prints_each_tiers_promises_kept():
    result = runner.invoke(app, ["plan", "simulate", "--rate", "0.2", "--duration", "10",
                                 "--mix", "standard=1"])
    assert result.exit_code == 0, result.output
    assert "standard" in result.output and "revenue" in result.output


def test_calibrate_reads_a_capacity_probe_cache(tmp_path):
    # A probe as `serve` caches it: steps that grow by 1 ms a sequence over a 9 ms floor.
    probe = {
        "points": [
            {"batch": b, "step_s": 0.009 + 0.001 * b, "tokens_per_s_per_user": 1.0,
             "tokens_per_s": 1.0}
            for b in (1, 2, 4, 8, 16, 32)
        ],
        "ttft_prompt_tokens": 256,
        "ttft_s": 0.25,
    }
    path = tmp_path / "capacity-0.json"
    path.write_text(json.dumps(probe))
    result = runner.invoke(app, ["plan", "calibrate", "--probe", str(path), "--model",
                                 "smollm2-135m", "--hardware", "cpu"])
    assert result.exit_code == 0, result.output
    assert "batch 32, context 38 (probe)" in result.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"points": [{"batch": 1}], "ttft_s": 1}))
    result = runner.invoke(app, ["plan", "calibrate", "--probe", str(bad), "--model",
                                 "smollm2-135m", "--hardware", "cpu"])
    assert result.exit_code == 2 and "not a capacity-probe cache" in result.output
