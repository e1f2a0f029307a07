"""The command line as a user runs it: real processes, the real embedded model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "tokenfactory.cli"]
ENV = {**os.environ, "COLUMNS": "120"}


def run(*args: str, stdin: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], input=stdin, capture_output=True, text=True, timeout=timeout, env=ENV
    )


# The default dtype is bf16 wherever the CPU has bf16 dot products, and bf16 logits round
# differently on AMX and on AVX512-only CPUs. "What is the capital of France?" starts with a
# near-tie ("The" 0.08 above "L" in float32, equal in bf16 on an AVX512-only EPYC, which then
# answers "L'Etoile..."); this wording leads every greedy token by 0.6 or more in both dtypes.
QUESTION = "Name the capital city of France."


def test_generate_answers_and_reports_json():
    res = run("generate", "--json", "--max-tokens", "12", QUESTION)
    assert res.returncode == 0, res.stderr
    row = json.loads(res.stdout.strip().splitlines()[-1])
    assert "Paris" in row["text"]
    assert row["completion_tokens"] <= 12
    assert row["finish_reason"] in ("stop", "length")


def test_chat_streams_replies_from_piped_input():
    res = run("chat", "--temperature", "0", "--max-tokens", "12",
              stdin=f"{QUESTION}\n/exit\n")
    assert res.returncode == 0, res.stderr
    assert "Paris" in res.stdout
    assert "tokens/s" in res.stderr


def test_missing_model_is_a_clear_error_not_a_traceback(tmp_path: Path):
    res = run("generate", "--model", str(tmp_path / "nope.gguf"), "hi")
    assert res.returncode == 2
    assert "not found" in res.stderr
    assert "Traceback" not in res.stderr


def test_corrupt_model_is_a_clear_error(tmp_path: Path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 20)
    res = run("generate", "--model", str(bad), "hi")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "corrupt" in res.stderr.lower() or "truncated" in res.stderr.lower()


def test_bad_sampling_value_is_a_clear_error():
    res = run("generate", "--max-tokens", "0", "hi")
    assert res.returncode == 2
    assert "max_tokens" in res.stderr
    assert "Traceback" not in res.stderr


def test_bench_engine_writes_json(tmp_path: Path):
    out = tmp_path / "bench.json"
    res = run(
        "bench", "engine", "--random-weights", "smollm2-135m", "--num-requests", "4",
        "--input-len", "8..16", "--output-len", "4..8", "--batch-sizes", "1,4",
        "--sweep-context", "32", "--prefill-len", "64", "--kv-cache-gb", "0.2", "--out", str(out),
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    assert data["schema"] == "tokenfactory.bench.engine/1"
    assert data["roofline"]["copy_bandwidth_gbs"] > 0
    assert [r["batch"] for r in data["decode_sweep"]] == [1, 4]
    assert all(0 < r["roofline_fraction"] <= 1.5 for r in data["decode_sweep"])
    assert data["offline"]["output_tokens"] >= 4 * 4
    assert data["prefill"]["prompt_tokens"] == 64
