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


def _served_steps(path, params, shape_name="smollm2-135m", hardware_name="cpu"):
    """A step log as a busy server writes it, its steps timed by `params`, and 2 ms of host
    work between back-to-back steps."""
    from tokenfactory.planner.hardware import hardware
    from tokenfactory.planner.perf_model import Peak, StepWork, step_seconds
    from tokenfactory.planner.shapes import model_shape
    from tokenfactory.scheduling.step_log import StepLogWriter
    from tokenfactory.scheduling.step_stats import StepStats

    hw = hardware(hardware_name)
    shape = model_shape(shape_name, "bf16")
    peak = Peak(hw.bandwidth, hw.flops_per_s("bf16"))
    writer = StepLogWriter(path)
    t = 0.0
    for seqs in (1, 2, 4, 8, 16, 32):
        for i in range(30):
            prefill = 0 if i % 3 else (64 if i % 2 else 128)
            ctx = 200
            busy = step_seconds(shape, peak, params, StepWork(
                seqs=seqs, context=ctx, prefill_tokens=prefill,
                prefill_context=prefill / 2 if prefill else None))
            writer(StepStats(started_at=t, duration_s=busy, num_seqs=seqs + (prefill > 0),
                             num_decode_tokens=seqs, num_prefill_tokens=prefill,
                             num_kv_tokens_read=seqs * ctx + prefill * prefill // 2,
                             num_sampled=seqs, num_preempted=0, num_waiting=0,
                             num_running=seqs, kv_usage=0.1))
            t += busy + 0.002
    writer.close()


def test_calibrate_fits_a_served_step_log_with_the_host_time_and_writes_a_calibration(tmp_path):
    from tokenfactory.planner.hardware import hardware
    from tokenfactory.planner.perf_model import PerfParams

    truth = PerfParams(base_s=0.004, per_seq_s=0.0005, memory_efficiency=0.5,
                       compute_efficiency=0.3, prefill_step_s=0.006)
    log = tmp_path / "steps.jsonl"
    _served_steps(log, truth)
    cal = tmp_path / "loaded.json"
    result = runner.invoke(app, ["plan", "calibrate", "--step-log", str(log), "--model",
                                 "smollm2-135m", "--hardware", "cpu", "--write", str(cal)])
    assert result.exit_code == 0, result.output
    assert "batch 32, prefill ~" in result.output and "(5 steps)" in result.output
    fitted = hardware("local", cal).params
    # The 2 ms between busy steps is the factory's cost of a step: it lands in the fixed cost.
    assert fitted.base_s == pytest.approx(truth.base_s + 0.002, rel=0.15)
    assert fitted.prefill_step_s == pytest.approx(truth.prefill_step_s, rel=0.25)
    sim = runner.invoke(app, ["plan", "simulate", "--hardware", "local", "--calibration",
                              str(cal), "--rate", "0.5", "--duration", "10",
                              "--mix", "standard=1"])
    assert sim.exit_code == 0, sim.output
    for bad, says in ((tmp_path / "none.jsonl", "cannot read"),):
        res = runner.invoke(app, ["plan", "calibrate", "--step-log", str(bad), "--model",
                                  "smollm2-135m", "--hardware", "cpu"])
        assert res.exit_code == 2 and says in res.output, res.output
    short = tmp_path / "short.jsonl"
    short.write_text("\n".join(log.read_text().splitlines()[:3]) + "\n")
    res = runner.invoke(app, ["plan", "calibrate", "--step-log", str(short), "--model",
                              "smollm2-135m", "--hardware", "cpu"])
    assert res.exit_code == 2 and "log a longer run" in res.output
    res = runner.invoke(app, ["plan", "calibrate", "--step-log", str(log)])
    assert res.exit_code == 2 and "need --model and --hardware" in res.output
    pooled = runner.invoke(app, ["plan", "calibrate", "--step-log", str(log), "--step-log",
                                 str(log), "--model", "smollm2-135m", "--hardware", "cpu"])
    assert pooled.exit_code == 0 and "(10 steps)" in pooled.output, pooled.output
    assert "steps.jsonl and 1 more" in pooled.output
