"""What the HTTP path costs: the same workload in-process and through a real server process.

Both sides run identical requests (token-id prompts, fixed output length, greedy, ignore_eos)
on the same machine, one after the other: first the engine alone (`Engine.generate`), then
`tokenfactory serve` in a child process driven by concurrent streaming clients. The ratio of
output tokens/s is the share of the engine's speed that survives the server.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.engine import Engine
from tokenfactory.engine.sampling_params import SamplingParams


@dataclass
class OverheadResult:
    requests: int
    prompt_tokens: int
    output_tokens: int
    engine_s: float
    engine_tokens_per_s: float
    server_s: float
    server_tokens_per_s: float
    ratio: float
    server_errors: int


def prompts(n: int, length: int, vocab: int) -> list[list[int]]:
    # distinct prompts so that the prefix cache helps neither side
    return [[(31 * i + 7 * j + 11) % (vocab - 10) + 5 for j in range(length)] for i in range(n)]


def run_engine(engine: Engine, ids: list[list[int]], out: int) -> float:
    params = SamplingParams(temperature=0.0, max_tokens=out, ignore_eos=True)
    warm = [[t + 1 for t in p] for p in ids]  # other prompts: the prefix cache stays cold
    engine.generate(warm, SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True))
    start = time.monotonic()
    done = engine.generate(ids, params)
    elapsed = time.monotonic() - start
    assert all(len(c.token_ids) == out for c in done)
    return elapsed


async def _drive(base: str, key: str, model: str, ids: list[list[int]], out: int):
    limits = httpx.Limits(max_connections=len(ids) + 4, max_keepalive_connections=len(ids) + 4)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=600) as client:
        headers = {"Authorization": f"Bearer {key}"}
        failures: list[str] = []

        async def one(prompt: list[int], max_tokens: int = out) -> int:
            body = {
                "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
            }
            tokens = 0
            async with client.stream("POST", "/v1/completions", json=body,
                                     headers=headers) as r:
                if r.status_code != 200:
                    await r.aread()
                    failures.append(f"{r.status_code} {r.text[:200]}")
                    return -1
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        chunk = json.loads(line[6:])
                        if chunk.get("usage"):
                            tokens = chunk["usage"]["completion_tokens"]
            return tokens

        # the same warm-up round as the engine gets, on prompts the timed round does not share
        await asyncio.gather(*(one([t + 1 for t in p], 16) for p in ids))
        start = time.monotonic()
        counts = await asyncio.gather(*(one(p) for p in ids))
        if failures:
            print(f"{len(failures)} requests failed, first: {failures[0]}", file=sys.stderr)
        return time.monotonic() - start, counts


def run_server(
    model: str | None, ids: list[list[int]], out: int, max_num_seqs: int, threads: int | None
) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        exe = Path(sys.executable).with_name("tokenfactory")
        # Promises any machine keeps: this measures the HTTP path, not which tiers open here.
        tiers = Path(tmp) / "tiers.toml"
        tiers.write_text(_open_tiers_toml())
        cmd = [str(exe), "serve", "--port", str(port), "--data-dir", tmp, "--tiers", str(tiers),
               "--max-num-seqs", str(max_num_seqs), "--probe-batches", "1"]
        if model:
            cmd += ["--model", model]
        if threads:
            cmd += ["--threads", str(threads)]
        log = open(Path(tmp) / "server.log", "wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 300
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((Path(tmp) / "server.log").read_text())
                try:
                    if httpx.get(base + "/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.3)
            key = json.loads((Path(tmp) / "local-keys.json").read_text())["free"]
            name = httpx.get(base + "/v1/models",
                             headers={"Authorization": f"Bearer {key}"}).json()["data"][0]["id"]
            elapsed, counts = asyncio.run(_drive(base, key, name, ids, out))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            log.close()
    return elapsed, sum(1 for c in counts if c != out)


def _open_tiers_toml() -> str:
    from tokenfactory.tiers import load_tiers

    lines = []
    catalog = load_tiers()
    for t in catalog.tiers:
        lines.append(f"[tiers.{t.name}]")
    lines.append("[presets.cpu]")
    lines += [f"{t.name} = {{ tokens_per_s = 0.01, ttft_s = 3600 }}" for t in catalog.tiers]
    return "\n".join(lines) + "\n"


def measure(
    model: str | None = None,
    requests: int = 64,
    prompt_len: int = 64,
    output_len: int = 128,
    threads: int | None = None,
) -> OverheadResult:
    config = EngineConfig(max_num_seqs=requests, num_threads=threads)
    engine = Engine.from_model_path(model, config)
    ids = prompts(requests, prompt_len, engine.model_config.vocab_size)
    engine_s = run_engine(engine, ids, output_len)
    del engine  # free its KV cache before the server allocates its own
    server_s, errors = run_server(model, ids, output_len, requests, threads)
    total = requests * output_len
    return OverheadResult(
        requests=requests,
        prompt_tokens=prompt_len,
        output_tokens=output_len,
        engine_s=engine_s,
        engine_tokens_per_s=total / engine_s,
        server_s=server_s,
        server_tokens_per_s=total / server_s,
        ratio=engine_s / server_s,
        server_errors=errors,
    )


def to_json(result: OverheadResult) -> str:
    return json.dumps(asdict(result), indent=2)
