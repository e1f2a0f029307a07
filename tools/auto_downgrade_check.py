"""Hand check of `service_tier=auto` under load, through HTTP with the official openai SDK.

Starts `tokenfactory serve --policy tier` (embedded model, shipped cpu tiers), fills it with
streams of named tiers (one super unless --no-super, four ultra, eight high), then after 1.5 s
sends two high-key requests: one with `service_tier="auto"`, one naming "high". Prints, per
request: the tier asked, the tier delivered (`service_tier` of the response), time to first
token and decode tokens/s.

    .venv/bin/python tools/auto_downgrade_check.py [--no-super]
"""

from __future__ import annotations

import asyncio
import sys
import time

import openai

from tokenfactory.bench.local_factory import LocalFactory


async def one(f: LocalFactory, model: str, key_tier: str, service_tier: str, max_tokens: int,
              label: str) -> tuple:
    client = openai.AsyncOpenAI(base_url=f.base + "/v1", api_key=f.key(key_tier), max_retries=0)
    t0, first, n, delivered = time.monotonic(), None, 0, None
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": f"Tell me a long story about {label}."}],
        max_tokens=max_tokens, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True}, service_tier=service_tier,
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            n += 1
            first = first or time.monotonic()
        delivered = getattr(chunk, "service_tier", None) or delivered
    speed = (n - 1) / (time.monotonic() - first) if first and n > 1 else None
    ttft = first - t0 if first else None
    return label, service_tier, delivered, ttft, speed


async def main(f: LocalFactory, with_super: bool) -> None:
    model = f.model()
    load = [one(f, model, "super", "super", 150, "super")] if with_super else []
    load += [one(f, model, "ultra", "ultra", 120, f"ultra{i}") for i in range(4)]
    load += [one(f, model, "high", "high", 100, f"high{i}") for i in range(8)]
    background = [asyncio.create_task(x) for x in load]
    await asyncio.sleep(1.5)
    probes = [asyncio.create_task(one(f, model, "high", "auto", 40, "probe-auto")),
              asyncio.create_task(one(f, model, "high", "high", 40, "probe-named"))]
    print(f"{'request':12} {'asked':6} {'delivered':9} {'TTFT s':>7} {'tokens/s':>8}")
    for label, asked, delivered, ttft, speed in await asyncio.gather(*probes, *background):
        ttft_s = f"{ttft:7.2f}" if ttft is not None else "      -"
        speed_s = f"{speed:8.1f}" if speed is not None else "       -"
        print(f"{label:12} {asked:6} {delivered or '-':9} {ttft_s} {speed_s}")


if __name__ == "__main__":
    factory = LocalFactory(["--policy", "tier"])
    try:
        asyncio.run(main(factory, with_super="--no-super" not in sys.argv[1:]))
    finally:
        factory.close()
