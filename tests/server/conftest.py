"""A real factory server process on a free loopback port, with the real embedded model."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tokenfactory.bench.local_factory import copy_probe, open_tiers_toml

MODEL = "SmolLM2-135M-Instruct"
# Hardware probes measured by this session's servers, handed to the next ones: a server with
# the same model and options then only rechecks a few steps (about 6 s of a 10 s start saved).
# Each server still checks the cached probe against this machine, as a user's restart does.
_SESSION_PROBES = Path(tempfile.mkdtemp(prefix="tokenfactory-test-probes-"))
atexit.register(shutil.rmtree, _SESSION_PROBES, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tokenfactory_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("tokenfactory")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("tokenfactory")
    return [found] if found else [sys.executable, "-m", "tokenfactory.cli"]


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    port: int
    data_dir: Path
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def keys(self) -> dict[str, str]:
        return json.loads((self.data_dir / "local-keys.json").read_text())

    def openai(self, tier: str = "super", **kw):
        import openai

        return openai.OpenAI(
            base_url=self.base_url + "/v1", api_key=self.keys[tier], max_retries=0, **kw
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_server(data_dir: Path, *extra: str, timeout: float = 240) -> ServerProcess:
    data_dir.mkdir(parents=True, exist_ok=True)
    if "--tiers" not in extra:
        tiers = data_dir / "loose-tiers.toml"
        tiers.write_text(open_tiers_toml())  # tests must not depend on this machine's speed
        extra = ("--tiers", str(tiers), *extra)
    copy_probe(_SESSION_PROBES, data_dir)
    port = free_port()
    log_path = data_dir / f"server-{port}.log"
    cmd = [
        *tokenfactory_cmd(), "serve", "--port", str(port), "--data-dir", str(data_dir),
        "--probe-batches", "1,4", "--log-level", "warning", *extra,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = ServerProcess(proc, port, data_dir, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.base_url + "/ready", timeout=2).status_code == 200:
                copy_probe(data_dir, _SESSION_PROBES)
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server did not become ready in {timeout} s:\n{server.log()}")


@pytest.fixture(scope="session")
def factory_server(tmp_path_factory) -> ServerProcess:
    """One shared server for tests that do not stop or break it."""
    server = start_server(tmp_path_factory.mktemp("factory"))
    yield server
    server.stop()


def ledger_rows(data_dir: Path) -> dict[str, dict]:
    """Every ledger row by request id, straight from the database file."""
    import sqlite3

    con = sqlite3.connect(f"file:{data_dir / 'ledger.db'}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        rows = con.execute("SELECT * FROM ledger").fetchall()
    finally:
        con.close()
    return {r["request_id"]: dict(r) for r in rows}


def open_reservations(data_dir: Path) -> int:
    import sqlite3

    con = sqlite3.connect(f"file:{data_dir / 'ledger.db'}?mode=ro", uri=True)
    try:
        return con.execute("SELECT COUNT(*) FROM reservations").fetchone()[0]
    finally:
        con.close()


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory) -> Iterator[ServerProcess]:
    """A server with default options, to compare one with an option against (per module).
    A request that hits the prefix cache recomputes the prompt's tail in a span of another
    length, which may round differently in bf16 and flip a near tie (as batch size may), so
    a comparison sends the same requests to both servers in the same order, and their caches
    hold the same blocks."""
    server = start_server(tmp_path_factory.mktemp("plain"))
    yield server
    server.stop()


def assert_same_chat(server: ServerProcess, reference: ServerProcess, tier: str, **kw) -> None:
    """One chat request, whole then streamed, sent to `reference` and then to `server`: the
    same text, finish reason and usage, and `server`'s ledger bills what its client was told."""
    whole_ref = reference.openai(tier).chat.completions.create(**kw)
    client = server.openai(tier)
    whole = client.chat.completions.create(**kw)
    assert whole.choices[0].message.content == whole_ref.choices[0].message.content
    assert whole.usage.completion_tokens == whole_ref.usage.completion_tokens
    assert whole.choices[0].finish_reason == whole_ref.choices[0].finish_reason
    stream = dict(kw, stream=True, stream_options={"include_usage": True})
    chunks_ref = list(reference.openai(tier).chat.completions.create(**stream))
    chunks = list(client.chat.completions.create(**stream))

    def text(chunks: list) -> str:
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    assert text(chunks) == text(chunks_ref)
    assert chunks[-1].usage.completion_tokens == chunks_ref[-1].usage.completion_tokens
    rows = ledger_rows(server.data_dir)
    assert rows[whole.id]["completion_tokens"] == whole.usage.completion_tokens
    assert rows[chunks[0].id]["completion_tokens"] == chunks[-1].usage.completion_tokens
