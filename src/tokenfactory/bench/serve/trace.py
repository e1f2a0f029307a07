"""Mooncake-format traces: replay them, and make a small synthetic one.

One JSON object per line: `timestamp` (ms from the trace start), `input_length`,
`output_length` and `hash_ids`, one id per 512-token block of the prompt (the last block may be
partial). Equal ids mean equal blocks, so prompts are built block by block from text seeded by
the id: requests that share leading ids share an identical text prefix.

    python -m tokenfactory.bench.serve.trace --out src/tokenfactory/data/mooncake_sample.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenfactory.bench.serve.text import WORDS_PER_TOKEN, TextGen

if TYPE_CHECKING:
    from tokenfactory.bench.serve.workloads import Clamp, Session, TierPicker, WorkloadOptions

BLOCK_TOKENS = 512
SAMPLE_NAME = "mooncake_sample.jsonl"


def make_trace(
    n: int = 60, duration_s: float = 120.0, families: int = 6, seed: int = 0
) -> list[dict]:
    """A synthetic trace sized for the CPU model (prompts <= 1,536 tokens, outputs <= 128):
    requests belong to a few conversation families that share leading blocks (a system
    prompt, a document), then diverge; arrivals are Poisson over `duration_s`."""
    rng = random.Random(seed)
    next_id = 0
    family_prefix: list[list[int]] = []
    for _ in range(families):
        k = rng.randint(1, 2)
        family_prefix.append(list(range(next_id, next_id + k)))
        next_id += k
    t = 0.0
    rows = []
    for _ in range(n):
        t += rng.expovariate(n / duration_s)
        prefix = family_prefix[rng.randrange(families)]
        own = rng.randint(0, 2 - len(prefix))
        tail = rng.randint(32, BLOCK_TOKENS)
        ids = prefix + list(range(next_id, next_id + own + 1))
        next_id += own + 1
        input_length = (len(ids) - 1) * BLOCK_TOKENS + tail
        rows.append(
            {
                "timestamp": int(t * 1000),
                "input_length": input_length,
                "output_length": rng.randint(16, 128),
                "hash_ids": ids,
            }
        )
    return rows


def read_trace(source: str) -> list[dict]:
    """Rows from a JSONL file; `sample` is the shipped sample (regenerated if missing)."""
    if source == "sample":
        try:
            text = resources.files("tokenfactory").joinpath(f"data/{SAMPLE_NAME}").read_text()
        except (FileNotFoundError, OSError):
            return make_trace()
    else:
        text = Path(source).read_text("utf-8")
    rows: list[dict[str, Any]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append(
                {
                    "timestamp": float(row.get("timestamp", 0)),
                    "input_length": int(row["input_length"]),
                    "output_length": int(row["output_length"]),
                    "hash_ids": [int(h) for h in row.get("hash_ids", [])],
                }
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{source}:{lineno}: not a Mooncake trace row ({exc})") from None
    rows.sort(key=lambda r: r["timestamp"])
    return rows


class BlockText:
    """Text for hash-id blocks: the same id always gives the same words."""

    def __init__(self, seed: int = 0, encode=None) -> None:
        self.seed = seed
        self.encode = encode
        self.cache: dict[int, str] = {}

    def block(self, hash_id: int) -> str:
        if hash_id not in self.cache:
            gen = TextGen(hash_id * 1_000_003 + self.seed, self.encode)
            self.cache[hash_id] = gen.text(BLOCK_TOKENS)
        return self.cache[hash_id]

    def prompt(self, hash_ids: list[int], input_length: int) -> str:
        if not hash_ids:
            return TextGen(self.seed, self.encode).text(input_length)
        parts = [self.block(h) for h in hash_ids[:-1]]
        last = self.block(hash_ids[-1])
        rest = max(input_length - BLOCK_TOKENS * (len(hash_ids) - 1), 1)
        if rest < BLOCK_TOKENS:
            words = last.split()
            last = " ".join(words[: max(1, round(len(words) * rest / BLOCK_TOKENS))])
        parts.append(last)
        return " ".join(parts)


def trace_sessions(opts: WorkloadOptions, clamp: Clamp, pick: TierPicker) -> Iterator[Session]:
    from tokenfactory.bench.serve.workloads import RequestSpec, Session, _one

    rows = read_trace(opts.trace or "sample")
    blocks = BlockText(opts.seed, opts.encode)
    t0 = rows[0]["timestamp"] if rows else 0.0
    for i, row in enumerate(rows):
        n_in, n_out = clamp(row["input_length"], row["output_length"])
        ids = row["hash_ids"][: max(1, -(-n_in // BLOCK_TOKENS))]
        content = blocks.prompt(ids, n_in)
        tier = pick()
        spec = RequestSpec([{"role": "user", "content": content}], n_in, n_out, tier, f"t{i}")
        at = (row["timestamp"] - t0) / 1000.0 / opts.trace_speed
        yield Session(f"t{i}", tier, _one(0.0, spec), timestamp_s=at)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Write a synthetic Mooncake-format trace.")
    ap.add_argument("--out", required=True)
    ap.add_argument("--num", type=int, default=60)
    ap.add_argument("--duration", type=float, default=120.0, help="seconds")
    ap.add_argument("--families", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    rows = make_trace(a.num, a.duration, a.families, a.seed)
    Path(a.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} rows to {a.out} ({WORDS_PER_TOKEN} words per token in prompts)")


if __name__ == "__main__":
    main()
