"""What admission costs on a ledger database: `python -m tokenfactory.billing.bench --database-url
URL [--requests N]`. Uses a throwaway PostgreSQL schema (dropped after) or a temporary SQLite
file, and prints milliseconds per operation, one thread, for:

- rate check: one key's buckets locked, refilled, taken and written back (PostgreSQL rows, or
  this process's memory on SQLite), rolled back: the statements an admission adds, without
  the commit it shares with the budget hold;
- admission: rate limits + budget hold + reservation row (one transaction), and the same for
  a key without rate limits: the difference is what the shared buckets add to an admission;
- settlement: reservation deleted, ledger row written, money moved (one transaction);

and admissions per second from `--threads` threads spread over two fronts (two `Billing`s on
the database), all for one key (they queue on its counter row) or each for its own key.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import text

from tokenfactory.billing.db import make_engine
from tokenfactory.billing.service import Billing
from tokenfactory.tiers import load_tiers


def _ms_per_op(fn: Callable[[int], object], n: int) -> tuple[float, float]:
    """(median, p99) milliseconds of `fn(i)` over n calls."""
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return statistics.median(times), times[min(n - 1, int(n * 0.99))]


def admissions_per_s(url: str, data_dir: Path, n: int, threads: int, *, one_key: bool) -> float:
    """Admissions a second from `threads` threads over two fronts (rate-limited keys)."""
    catalog = load_tiers(None, "cpu")
    tier = catalog["high"]
    fronts = [Billing.open(catalog, url, data_dir, progress_interval_s=0) for _ in range(2)]
    try:
        keys = [
            fronts[0].create_key(f"t{i}", "high", budget_micro_usd=10**15, rpm=10**9,
                                 tpm=10**12)[0]
            for i in range(1 if one_key else threads)
        ]
        tag = secrets.token_hex(3)

        def admit(i: int) -> None:
            fronts[i % 2].admit(keys[i % len(keys)], request_id=f"{tag}-{i}", model="m",
                                tier=tier, prompt_tokens=50, max_completion_tokens=50)

        with ThreadPoolExecutor(threads) as pool:
            t0 = time.perf_counter()
            list(pool.map(admit, range(n)))
            return n / (time.perf_counter() - t0)
    finally:
        for front in fronts:
            front.close()


def run(url: str, data_dir: Path, n: int) -> dict[str, tuple[float, float]]:
    catalog = load_tiers(None, "cpu")
    b = Billing.open(catalog, url, data_dir, progress_interval_s=0)
    try:
        tier = catalog["high"]
        key, _ = b.create_key("bench", "high", budget_micro_usd=10**15, rpm=10**9, tpm=10**12)
        free, _ = b.create_key("bench-free", "high", budget_micro_usd=10**15)
        out: dict[str, tuple[float, float]] = {}

        def rate_check(_i: int) -> None:
            with b.engine.connect() as conn, conn.begin() as tx:
                b.rate_limits.take(conn, key, 100)
                tx.rollback()

        out["rate check"] = _ms_per_op(rate_check, n)
        held = []
        out["admission"] = _ms_per_op(
            lambda i: held.append(
                b.admit(key, request_id=f"bench-{i}", model="m", tier=tier, prompt_tokens=50,
                        max_completion_tokens=50)
            ),
            n,
        )
        out["admission, no rate limits"] = _ms_per_op(
            lambda i: b.admit(free, request_id=f"free-{i}", model="m", tier=tier,
                              prompt_tokens=50, max_completion_tokens=50),
            n,
        )
        out["settlement"] = _ms_per_op(
            lambda i: b.settle(
                held[i], tier_delivered=tier, prompt_tokens=50, cached_tokens=0,
                completion_tokens=20, finish_reason="stop", queue_time_s=None, ttft_s=None,
                decode_tokens_per_s=None, client_disconnected=False,
            ),
            n,
        )
        return out
    finally:
        b.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--database-url", default=None, help="PostgreSQL URL (default: SQLite)")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        url, schema = args.database_url, None
        if url is not None and url.startswith("postgres"):
            schema = f"tf_bench_{secrets.token_hex(4)}"
            admin = make_engine(url)
            with admin.begin() as conn:
                conn.execute(text(f"CREATE SCHEMA {schema}"))
            url = f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
        try:
            url = url or f"sqlite:///{tmp}/ledger.db"
            results = run(url, Path(tmp), args.requests)
            rates = {
                what: admissions_per_s(url, Path(tmp), args.requests, args.threads,
                                       one_key=what == "one key")
                for what in ("one key", "a key per thread")
            }
        finally:
            if schema is not None:
                with admin.begin() as conn:
                    conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
                admin.dispose()
    where = "PostgreSQL" if schema else "SQLite"
    print(f"{where}, {args.requests} operations each, one thread (milliseconds):")
    for name, (median, p99) in results.items():
        print(f"  {name:<25} median {median:.3f} ms   p99 {p99:.3f} ms")
    print(f"{args.threads} threads over two fronts (admissions a second):")
    for what, rate in rates.items():
        print(f"  {what:<25} {rate:,.0f}/s")


if __name__ == "__main__":
    main()
