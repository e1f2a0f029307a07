"""Cost per task and prefix-cache reuse: requests grouped by the task id they were sent with
(one agent session = one task), priced from each response's usage at its delivered tier, and
beside that what the endpoint's ledger billed each task (`GET /v1/usage?by=task`) when it
offers one.

Prefix-cache hit is cached prompt tokens / prompt tokens, as the responses' usage reports.
It is split into a task's first request (which can reuse only what other tasks share, such
as a system prompt) and its later ones, whose reuse ceiling is what the server has already
seen of them: the previous request's prompt and reply, less the reply's last token (never
run through the model). A server caching whole KV blocks rounds that down a little.
"""

from __future__ import annotations

import httpx
import numpy as np

from tokenfactory.bench.serve.client import RequestRecord
from tokenfactory.bench.serve.metrics import cost_micro_usd, tier_of
from tokenfactory.tiers import TierCatalog


def task_rows(records: list[RequestRecord], catalog: TierCatalog) -> list[dict]:
    """One row per task id (requests without one are left out), in first-sent order."""
    groups: dict[str, list[RequestRecord]] = {}
    for r in records:
        if r.task_id is not None:
            groups.setdefault(r.task_id, []).append(r)
    rows = []
    for task_id, rs in groups.items():
        ok = sorted((r for r in rs if r.ok), key=lambda r: r.step)
        prompt = sum(r.prompt_tokens or 0 for r in ok)
        cached = sum(r.cached_tokens or 0 for r in ok)
        rows.append(
            {
                "task_id": task_id,
                "tier": tier_of(rs[0], catalog),
                "requests": len(rs),
                "failed": len(rs) - len(ok),
                "prompt_tokens": prompt,
                "cached_tokens": cached,
                "output_tokens": sum(r.output_tokens for r in ok),
                "prefix_cache_hit": cached / prompt if prompt else None,
                "cost_micro_usd": sum(cost_micro_usd(r, catalog) for r in rs),
                "ledger_cost_micro_usd": None,
                **_reuse(ok),
            }
        )
    return rows


def _reuse(ok: list[RequestRecord]) -> dict:
    """Prompt and cached tokens of the first request and of the later ones (each with what
    the server had seen of it before), for requests in step order."""
    first = ok[0] if ok and ok[0].step == 0 else None
    later = {"prompt_tokens": 0, "cached_tokens": 0, "seen_tokens": 0}
    for prev, r in zip(ok, ok[1:], strict=False):
        if r.step != prev.step + 1 or r.prompt_tokens is None or prev.prompt_tokens is None:
            continue  # a gap (a failed request): no reliable ceiling
        later["prompt_tokens"] += r.prompt_tokens
        later["cached_tokens"] += r.cached_tokens or 0
        seen = prev.prompt_tokens + max(prev.output_tokens - 1, 0)
        later["seen_tokens"] += min(seen, r.prompt_tokens)
    return {
        "first_request": None if first is None else {
            "prompt_tokens": first.prompt_tokens or 0,
            "cached_tokens": first.cached_tokens or 0,
        },
        "later_requests": later,
    }


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _spread(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "p50": None, "p90": None, "max": None}
    arr = np.asarray(values, dtype=float)
    p50, p90 = np.percentile(arr, [50, 90])
    return {"mean": float(arr.mean()), "p50": float(p50), "p90": float(p90),
            "max": float(arr.max())}


def tasks_by_tier(rows: list[dict], catalog: TierCatalog) -> dict[str, dict]:
    """Per tier: how many tasks, their cost (from responses, and from the ledger when every
    task of the tier has a ledger figure) and the tier's prefix-cache hit."""
    rank = {t.name: t.rank for t in catalog.tiers}
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["tier"], []).append(row)
    out = {}
    for tier, rs in sorted(groups.items(), key=lambda kv: rank.get(kv[0], 99)):
        prompt = sum(r["prompt_tokens"] for r in rs)
        cached = sum(r["cached_tokens"] for r in rs)
        ledger = [r["ledger_cost_micro_usd"] for r in rs]
        firsts = [r["first_request"] for r in rs if r["first_request"] is not None]
        later = [r["later_requests"] for r in rs]
        later_prompt = sum(x["prompt_tokens"] for x in later)
        out[tier] = {
            "tasks": len(rs),
            "requests_per_task": sum(r["requests"] for r in rs) / len(rs),
            "prompt_tokens_per_task": prompt / len(rs),
            "prefix_cache_hit": cached / prompt if prompt else None,
            "first_request_cache_hit": _share(
                sum(x["cached_tokens"] for x in firsts), sum(x["prompt_tokens"] for x in firsts)
            ),
            "later_requests_cache_hit": _share(
                sum(x["cached_tokens"] for x in later), later_prompt
            ),
            "later_requests_reuse_ceiling": _share(
                sum(x["seen_tokens"] for x in later), later_prompt
            ),
            "cost_per_task_micro_usd": _spread([r["cost_micro_usd"] for r in rs]),
            "ledger_cost_per_task_micro_usd": (
                _spread(ledger) if all(v is not None for v in ledger) else None
            ),
        }
    return out


def tasks_doc(
    records: list[RequestRecord], catalog: TierCatalog, ledger: dict[str, int] | None
) -> dict | None:
    """The run's `tasks` section (None when no request carried a task id)."""
    rows = task_rows(records, catalog)
    if not rows:
        return None
    if ledger is not None:
        for row in rows:
            row["ledger_cost_micro_usd"] = ledger.get(row["task_id"], 0)
    return {
        "ledger": ledger is not None,
        "by_tier": tasks_by_tier(rows, catalog),
        "tasks": rows,
    }


def fetch_ledger_costs(
    client: httpx.Client, api_url: str, keys: set[str | None], task_ids: set[str]
) -> dict[str, int] | None:
    """What the endpoint billed each of `task_ids`, summed over the keys that sent them; None
    when it has no `GET /v1/usage?by=task` (not a tokenfactory, or an older one)."""
    if not task_ids:
        return None
    costs: dict[str, int] = {}
    for key in keys:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            resp = client.get(f"{api_url}/usage", params={"by": "task"}, headers=headers)
            if resp.status_code != 200:
                return None
            data = resp.json()["data"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None
        for row in data:
            task = row.get("task_id")
            if task in task_ids:
                costs[task] = costs.get(task, 0) + int(row.get("amount_micro_usd") or 0)
    return costs
