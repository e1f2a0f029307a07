"""The command line end to end: JSON schema, HTML, console summary, compare, self-benchmark."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tokenfactory.bench.serve.console import compare_reports
from tokenfactory.bench.serve.report import SCHEMA, VERSION, load_report
from tokenfactory.bench.serve.selfbench import run_selfbench
from tokenfactory.cli import app

pytestmark = pytest.mark.integration  # the command line end to end

TOP = {
    "schema",
    "version",
    "tool",
    "machine",
    "endpoint",
    "config",
    "tiers",
    "runs",
    "tier_speculation",
}
RUN = {
    "label",
    "request_rate",
    "max_concurrency",
    "started_utc",
    "duration_s",
    "clamped_requests",
    "summary",
    "requests",
}
SUMMARY = {
    "requests",
    "errors",
    "ttft_ms",
    "tpot_ms",
    "itl_ms",
    "e2el_ms",
    "decode_tokens_per_s",
    "tokens",
    "throughput",
    "goodput_requests_per_s",
    "revenue",
    "delivered_tiers",
    "promise",
}
DIST = {"n", "mean", "p50", "p90", "p95", "p99", "max"}
ROW = {
    "id",
    "tier",
    "requested_tier",
    "delivered_tier",
    "session",
    "step",
    "start_s",
    "end_s",
    "ttft_s",
    "tpot_s",
    "e2el_s",
    "decode_tokens_per_s",
    "planned_input_tokens",
    "max_tokens",
    "prompt_tokens",
    "cached_tokens",
    "output_tokens",
    "content_chunks",
    "finish_reason",
    "ok",
    "error_kind",
    "error_type",
    "error_status",
    "error_message",
    "retry_after",
    "cost_micro_usd",
}


def bench(base: str, out, *extra: str):
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "serve",
            "--base-url",
            base,
            "--no-progress",
            "--out",
            str(out),
            "--input-len",
            "16",
            "--output-len",
            "6",
            *extra,
        ],
    )
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def reports(fast_endpoint, tmp_path_factory):
    d = tmp_path_factory.mktemp("reports")
    mix = ["--tier-mix", "standard=1,super=1", "--num-prompts", "12"]
    a = bench(fast_endpoint.base, d / "a.json", *mix, "--max-concurrency", "2,4")
    bench(fast_endpoint.base, d / "b.json", *mix, "--max-concurrency", "2,4", "--no-html")
    return d, a


def test_json_report_schema_is_stable(reports):
    d, result = reports
    doc = load_report(d / "a.json")
    assert (doc["schema"], doc["version"]) == (SCHEMA, VERSION) == ("tokenfactory.bench.serve", 1)
    assert set(doc) == TOP
    assert doc["tier_speculation"] is None  # the fake endpoint does not report speculation
    assert [r["max_concurrency"] for r in doc["runs"]] == [2, 4]
    run = doc["runs"][0]
    assert set(run) == RUN and run["request_rate"] is None
    assert set(run["summary"]) == {"overall", "tiers"}
    assert set(run["summary"]["tiers"]) == {"standard", "super"}
    overall = run["summary"]["overall"]
    assert set(overall) == SUMMARY
    assert all(set(overall[k]) == DIST for k in SUMMARY if k.endswith("_ms"))
    assert set(run["summary"]["tiers"]["super"]["promise"]) == {
        "met",
        "attainment",
        "tier",
        "ttft_s",
        "tokens_per_s",
        "p95_ttft_s",
        "p50_decode_tokens_per_s",
        "tier_promise_kept",
    }
    assert len(run["requests"]) == 12 and set(run["requests"][0]) == ROW
    assert doc["endpoint"]["model"] == "fake-model"
    assert {t["name"] for t in doc["tiers"]["data"]} >= {"free", "standard", "super"}
    assert "overall" in result.output and "super" in result.output


def test_html_report_has_the_plots(reports):
    d, _ = reports
    html = (d / "a.html").read_text()
    assert html.count("data:image/png;base64,") == 1 + 2 * 3  # sweep plot + 3 per run
    assert "Throughput vs interactivity" in html and "super" in html


def test_compare_prints_ratios(reports):
    d, _ = reports
    rows = compare_reports(load_report(d / "a.json"), load_report(d / "a.json"))
    assert {r.ratio for r in rows if r.ratio is not None} == {1.0}
    assert {r.group for r in rows} == {"overall", "standard", "super"}
    result = CliRunner().invoke(app, ["bench", "compare", str(d / "a.json"), str(d / "b.json")])
    assert result.exit_code == 0, result.output
    assert "B/A" in result.output and "TTFT p50 ms" in result.output
    (d / "bad.json").write_text(json.dumps({"schema": "other"}))
    bad = CliRunner().invoke(app, ["bench", "compare", str(d / "a.json"), str(d / "bad.json")])
    assert bad.exit_code == 2


def test_sweep_over_rates_and_trace_workload(fast_endpoint, tmp_path):
    bench(
        fast_endpoint.base,
        tmp_path / "r.json",
        "--request-rate",
        "50,100",
        "--num-prompts",
        "5",
        "--no-html",
    )
    doc = load_report(tmp_path / "r.json")
    assert [r["request_rate"] for r in doc["runs"]] == [50, 100]
    assert not (tmp_path / "r.html").exists()
    bench(
        fast_endpoint.base,
        tmp_path / "t.json",
        "--workload",
        "trace",
        "--trace-speed",
        "1000",
        "--num-prompts",
        "8",
        "--max-context",
        "2048",
        "--endpoint",
        "completions",
        "--no-html",
    )
    run = load_report(tmp_path / "t.json")["runs"][0]
    assert len(run["requests"]) == 8 and all(r["ok"] for r in run["requests"])


def test_generator_throughput_check_runs_at_small_scale():
    res = run_selfbench(concurrency=8, num_prompts=16, output_len=64, quiet=True)
    assert res["errors"] == 0 and res["output_tokens"] == 16 * 64
    assert res["tokens_per_s"] > 0 and res["content_chunks"] == 16 * 64
