"""How fast can the generator measure? Streams from the fake endpoint as fast as it serves.

The fake endpoint runs in its own process (pinned to another core where the machine has one);
the generator runs here, pinned to one core. Prints streamed tokens per wall second and per
CPU-second of the generator (its capacity on one core), and writes JSON with --out.

    python -m tokenfactory.bench.serve.selfbench --concurrency 64 --num-prompts 400
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import httpx
from rich.console import Console

from tokenfactory.bench.serve.runner import LoadPoint, Runner, RunOptions, api_url, run_point
from tokenfactory.bench.serve.tiers_info import KeyRing, fetch_catalog
from tokenfactory.bench.serve.workloads import WorkloadOptions


def start_fake_server(args: list[str] | None = None) -> tuple[subprocess.Popen, str]:
    """The fake endpoint in a child process on a free loopback port; returns (proc, base)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tokenfactory.bench.serve.fake_server",
            "--port",
            "0",
            *(args or []),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "http://" not in line:
        proc.kill()
        raise RuntimeError(f"fake endpoint did not start: {line!r}")
    return proc, line.strip().split()[-1]


def _pin(pid: int, cpu: int) -> bool:
    try:
        os.sched_setaffinity(pid, {cpu})
        return True
    except (AttributeError, OSError):
        return False


def run_selfbench(
    concurrency: int,
    num_prompts: int,
    output_len: int,
    server_tokens_per_s: float = 0.0,
    quiet: bool = False,
) -> dict:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    proc, base = start_fake_server(["--tokens-per-s", str(server_tokens_per_s)])
    try:
        pinned = len(cpus) > 1 and _pin(proc.pid, cpus[1]) and _pin(0, cpus[0])
        catalog = fetch_catalog(httpx.Client(), base, "gpu", None)
        opts = RunOptions(api_url(base), "fake-model", num_prompts=num_prompts, progress=False)
        workload = WorkloadOptions("random", input_len="32", output_len=str(output_len))
        runner = Runner(opts, workload, catalog, KeyRing(), Console(stderr=True, quiet=quiet))
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = run_point(runner, LoadPoint(max_concurrency=concurrency))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        proc.terminate()
        proc.wait(5)
    tokens = sum(r.output_tokens for r in result.records if r.ok)
    chunks = sum(r.chunks for r in result.records)
    speeds = sorted(v for r in result.records if (v := r.decode_tps) is not None)
    return {
        "concurrency": concurrency,
        "server_tokens_per_s_per_stream": server_tokens_per_s or None,
        "median_decode_tokens_per_s": round(speeds[len(speeds) // 2], 2) if speeds else None,
        "requests": len(result.records),
        "errors": sum(1 for r in result.records if not r.ok),
        "output_tokens": tokens,
        "content_chunks": chunks,
        "wall_s": round(wall, 3),
        "generator_cpu_s": round(cpu, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "tokens_per_cpu_s": round(tokens / cpu, 1) if cpu > 0 else None,
        "pinned_one_core": pinned,
        "machine": platform.platform(),
        "cpus": len(cpus),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Throughput of the load generator itself.")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--num-prompts", type=int, default=400)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument(
        "--server-tokens-per-s",
        type=float,
        default=0.0,
        help="pace each stream (one chunk per write) instead of as fast as possible",
    )
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    res = run_selfbench(a.concurrency, a.num_prompts, a.output_len, a.server_tokens_per_s)
    print(
        f"{res['output_tokens']:,} tokens in {res['wall_s']:.2f} s: "
        f"{res['tokens_per_s']:,.0f} streamed tokens/s; generator CPU {res['generator_cpu_s']} s "
        f"= {res['tokens_per_cpu_s']:,.0f} tokens per CPU-second "
        f"({'pinned to one core' if res['pinned_one_core'] else 'not pinned'}); "
        f"errors {res['errors']}; median tokens/s per stream {res['median_decode_tokens_per_s']}"
    )
    if a.out:
        a.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
