"""How long a full garbage collection stops the serving process, before and after the
start-up heap is frozen (`tokenfactory.gc_heap.freeze_heap`, which `serve` calls).

Builds the factory exactly as `tokenfactory serve` does (embedded model, ledger, tiers, the
HTTP app) in a fresh data directory, then times `gc.collect()` five times, freezes, and times
it five times again.

    .venv/bin/python tools/gc_pause_check.py
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
from pathlib import Path

from tokenfactory.gc_heap import freeze_heap
from tokenfactory.server.app import create_app
from tokenfactory.server.run import ServeOptions, build_factory


def full_collections_ms(n: int = 5) -> list[float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - t) * 1000)
    return sorted(times)


if __name__ == "__main__":
    data = Path(tempfile.mkdtemp(prefix="tf-gc-check-"))
    factory = build_factory(ServeOptions(data_dir=data))
    create_app(factory)
    print(f"tracked objects: {len(gc.get_objects()):,}")
    print("full collection, ms, before freezing:", [round(x, 1) for x in full_collections_ms()])
    print(f"frozen objects: {freeze_heap():,}")
    print("full collection, ms, after freezing: ", [round(x, 2) for x in full_collections_ms()])
    os._exit(0)  # the engine thread is not ours to join here
