"""Several super streams at once beside standard ones, through HTTP, under fcfs and tier.

For each policy a fresh `tokenfactory serve` on the embedded model (both share the first
one's hardware probe, so they open the same tiers) gets `--standard` standard streams of 200
tokens, then `--super` super streams of 120 tokens, 0.2 s apart (greedy, `max_tokens` fixes
the lengths). Prints each stream's TTFT and decode speed as the client sees them and the tier
it was billed at. About a minute per policy on the 2-core VM.

    .venv/bin/python tools/concurrent_super_check.py [--super 3] [--standard 8]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time

import httpx

from tokenfactory.bench.local_factory import LocalFactory, copy_probe

PROMPT = "Write a long story about a lighthouse keeper named {}."


def stream(factory: LocalFactory, model: str, name: str, tier: str, max_tokens: int) -> dict:
    body = {
        "model": model,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": max_tokens,
        "temperature": 0,
        "service_tier": tier,
        "messages": [{"role": "user", "content": PROMPT.format(name)}],
    }
    headers = {"Authorization": f"Bearer {factory.key(tier)}"}
    sent = time.perf_counter()
    first = last = None
    tokens, billed = 0, None
    url = factory.base + "/v1/chat/completions"
    with httpx.stream("POST", url, json=body, headers=headers, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            doc = json.loads(line[5:])
            now = time.perf_counter()
            if doc.get("choices"):
                first = first or now
                last = now
            tokens = (doc.get("usage") or {}).get("completion_tokens", tokens)
            billed = doc.get("service_tier") or billed
    speed = (tokens - 1) / (last - first) if first and last and last > first else None
    return {"name": name, "tier": tier, "ttft_s": first - sent if first else None,
            "tokens": tokens, "tokens_per_s": speed, "billed": billed}


def run(factory: LocalFactory, supers: int, standards: int) -> list[dict]:
    model = factory.model()
    results: list[dict] = []

    def go(name: str, tier: str, max_tokens: int) -> None:
        results.append(stream(factory, model, name, tier, max_tokens))

    threads = [threading.Thread(target=go, args=(f"std{i}", "standard", 200))
               for i in range(standards)]
    for t in threads:
        t.start()
    time.sleep(2)  # the standard streams are decoding
    for k in range(supers):
        t = threading.Thread(target=go, args=(f"super{k}", "super", 120))
        t.start()
        threads.append(t)
        time.sleep(0.2)
    for t in threads:
        t.join()
    return sorted(results, key=lambda r: r["name"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--super", type=int, default=3, dest="supers")
    ap.add_argument("--standard", type=int, default=8, dest="standards")
    args = ap.parse_args()
    probe = tempfile.TemporaryDirectory()
    print("| policy | stream | TTFT s | decode tokens/s | billed as |")
    print("|---|---|---|---|---|")
    for i, policy in enumerate(("fcfs", "tier")):
        factory = LocalFactory(["--policy", policy], probe_dir=probe.name if i else None)
        try:
            if i == 0:
                copy_probe(factory.data_dir, probe.name)
            for r in run(factory, args.supers, args.standards):
                ttft = f"{r['ttft_s']:.2f}" if r["ttft_s"] is not None else "-"
                tps = f"{r['tokens_per_s']:.1f}" if r["tokens_per_s"] is not None else "-"
                print(f"| {policy} | {r['name']} ({r['tier']}) | {ttft} | {tps} | {r['billed']} |",
                      flush=True)
        finally:
            factory.close()


if __name__ == "__main__":
    main()
