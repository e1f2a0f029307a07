"""What streaming objects from a Ray actor costs in CPU, one stream per request against one
stream carrying every request (the fleet's `subscribe`).

An actor yields one small `ChannelBatch` per 78 ms step (a decode step at batch 16 on the
2-core VM) to each of N consumers, or one batch holding N requests' deltas to one consumer;
the CPU time of the driver (the front) and the actor (the replica) is read over the run.

    .venv/bin/python tools/ray_stream_cost.py [--requests 32] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import psutil
import ray

from tokenfactory.engine.outputs import RequestOutput
from tokenfactory.fleet.messages import ChannelBatch


def delta(request: int, token: int) -> RequestOutput:
    return RequestOutput(
        f"r{request}", [token], "x", None, False, None, None, 100, 0, token, 1.0, 1.0, None
    )


@ray.remote(max_concurrency=1024)
class Streamer:
    def pid(self) -> int:
        return os.getpid()

    async def stream(self, width: int, steps: int, period_s: float):
        for step in range(steps):
            await asyncio.sleep(period_s)
            yield ChannelBatch([delta(r, step) for r in range(width)], {}, time.monotonic())


def cpu_s(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def run(actor, streams: int, width: int, steps: int, period_s: float) -> tuple[float, int]:
    async def consume() -> None:
        async for ref in actor.stream.options(num_returns="streaming").remote(
            width, steps, period_s
        ):
            await ref

    async def all_streams() -> None:
        await asyncio.gather(*(consume() for _ in range(streams)))

    t = time.monotonic()
    asyncio.run(all_streams())
    return time.monotonic() - t, streams * steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--step-ms", type=float, default=78.0)
    args = ap.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    actor = Streamer.remote()
    front, replica = psutil.Process(), psutil.Process(ray.get(actor.pid.remote()))
    period = args.step_ms / 1000
    steps = int(args.seconds / period)
    run(actor, 1, 1, 5, period)  # warm-up
    print(f"{args.requests} requests, a step every {args.step_ms:g} ms, {args.seconds:g} s")
    print("| how | objects/s | front cores | replica cores | CPU per object |")
    print("|---|---:|---:|---:|---:|")
    for how, streams, width in [
        ("a stream per request", args.requests, 1),
        ("one stream, a batch per step", 1, args.requests),
    ]:
        f0, r0 = cpu_s(front), cpu_s(replica)
        wall, objects = run(actor, streams, width, steps, period)
        f, r = (cpu_s(front) - f0) / wall, (cpu_s(replica) - r0) / wall
        per = (f + r) * wall / objects * 1e3
        print(f"| {how} | {objects / wall:.0f} | {f:.3f} | {r:.3f} | {per:.2f} ms |")
    ray.shutdown()


if __name__ == "__main__":
    main()
