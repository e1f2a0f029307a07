"""What the HTTP path costs: the same workload in-process and through a real server process.

Both sides run identical requests (token-id prompts, fixed output length, greedy, ignore_eos)
on the same machine, one after the other: first the engine alone (`Engine.generate`), then
`tokenfactory serve` in a child process driven by concurrent streaming clients. The ratio of
output tokens/s is the share of the engine's speed that survives the server.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import httpx

from tokenfactory.bench.local_factory import LocalFactory
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
    rounds: int = 1
    engine_tokens_per_s_each: list[float] = field(default_factory=list)
    server_tokens_per_s_each: list[float] = field(default_factory=list)


def prompts(n: int, length: int, vocab: int, salt: int = 0) -> list[list[int]]:
    # distinct prompts (per request and per round) so that the prefix cache helps neither side
    return [
        [(31 * i + 7 * j + 1009 * salt + 11) % (vocab - 10) + 5 for j in range(length)]
        for i in range(n)
    ]


def run_engine(engine: Engine, ids: list[list[int]], out: int) -> float:
    params = SamplingParams(temperature=0.0, max_tokens=out, ignore_eos=True)
    start = time.monotonic()
    done = engine.generate(ids, params)
    elapsed = time.monotonic() - start
    assert all(len(c.token_ids) == out for c in done)
    return elapsed


async def _drive(client: httpx.AsyncClient, model: str, ids: list[list[int]], out: int):
    failures: list[str] = []

    async def one(prompt: list[int]) -> int:
        body = {
            "model": model, "prompt": prompt, "max_tokens": out, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
        }
        tokens = 0
        async with client.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                failures.append(f"{r.status_code} {r.text[:200]}")
                return -1
            async for line in r.aiter_lines():
                # parse only the usage chunk: the client shares this machine's cores
                if line.startswith("data: {") and '"usage":null' not in line:
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
        return tokens

    start = time.monotonic()
    counts = await asyncio.gather(*(one(p) for p in ids))
    if failures:
        print(f"{len(failures)} requests failed, first: {failures[0]}", file=sys.stderr)
    return time.monotonic() - start, sum(1 for c in counts if c != out)


class _Server:
    """The factory through HTTP: all tiers open, so only the HTTP path is measured."""

    def __init__(self, model: str | None, max_num_seqs: int, threads: int | None):
        args = ["--max-num-seqs", str(max_num_seqs), "--probe-batches", "1"]
        if model:
            args += ["--model", model]
        if threads:
            args += ["--threads", str(threads)]
        self.factory = LocalFactory(args, open_tiers=True)
        self.headers = {"Authorization": f"Bearer {self.factory.key('free')}"}
        self.model = self.factory.model()

    def run(self, ids: list[list[int]], out: int) -> tuple[float, int]:
        async def go():
            n = len(ids) + 4
            limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
            async with httpx.AsyncClient(base_url=self.factory.base, limits=limits,
                                         timeout=600, headers=self.headers) as client:
                return await _drive(client, self.model, ids, out)

        return asyncio.run(go())

    def close(self) -> None:
        self.factory.close()


def measure(
    model: str | None = None,
    requests: int = 64,
    prompt_len: int = 64,
    output_len: int = 128,
    threads: int | None = None,
    rounds: int = 3,
) -> OverheadResult:
    """Alternate engine and server rounds (fresh prompts each round, so the prefix cache helps
    neither) and compare medians: this machine's speed drifts more than the effect measured."""
    server = _Server(model, requests, threads)
    try:
        engine = Engine.from_model_path(model, EngineConfig(max_num_seqs=requests,
                                                            num_threads=threads))
        vocab = engine.model_config.vocab_size
        batches = [prompts(requests, prompt_len, vocab, salt=r) for r in range(2 * rounds + 2)]
        run_engine(engine, batches[0], 16)  # warm-up, as the server's probe warmed it
        server.run(batches[1], 16)
        engine_s, server_s, errors = [], [], 0
        for r in range(rounds):
            engine_s.append(run_engine(engine, batches[2 + 2 * r], output_len))
            elapsed, failed = server.run(batches[3 + 2 * r], output_len)
            server_s.append(elapsed)
            errors += failed
    finally:
        server.close()
    e, s = statistics.median(engine_s), statistics.median(server_s)
    total = requests * output_len
    return OverheadResult(
        requests=requests,
        prompt_tokens=prompt_len,
        output_tokens=output_len,
        engine_s=e,
        engine_tokens_per_s=total / e,
        server_s=s,
        server_tokens_per_s=total / s,
        ratio=e / s,
        server_errors=errors,
        rounds=rounds,
        engine_tokens_per_s_each=[total / x for x in engine_s],
        server_tokens_per_s_each=[total / x for x in server_s],
    )


def to_json(result: OverheadResult) -> str:
    return json.dumps(asdict(result), indent=2)
