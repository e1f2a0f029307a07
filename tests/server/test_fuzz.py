"""schemathesis fuzzes every route of the server's own OpenAPI schema: no input gives a 5xx.

The server runs a tiny random-weight Llama-3 (same code path as the real model, but fast and
with a 128-token window) so that hundreds of fuzzed generations finish in seconds.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.models.hf_fixtures import write_tiny_llama3_dir
from tests.server.conftest import start_server

pytestmark = pytest.mark.slow


def test_schemathesis_finds_no_server_error(tmp_path):
    model = write_tiny_llama3_dir(tmp_path / "tiny")
    server = start_server(
        tmp_path / "fuzz", "--model", str(model), "--max-model-len", "128", "--dtype", "float32",
        "--served-model-name", "tiny",
    )
    try:
        st = Path(sys.executable).with_name("st")
        cmd = [
            str(st), "run", server.base_url + "/openapi.json",
            "--checks", "not_a_server_error",
            "--max-examples", "40",
            "--header", f"Authorization: Bearer {server.keys['super']}",
            "--request-timeout", "60",
            "--seed", "1",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
        counts = re.search(r"(\d+) generated, (\d+) passed", proc.stdout)
        assert counts and counts[1] == counts[2] and int(counts[1]) >= 200, proc.stdout[-3000:]
        assert "Missing test data" not in proc.stdout  # the fuzzer reached the generation path
        assert "Traceback" not in server.log(), server.log()[-4000:]
    finally:
        server.stop()
