"""The JSON report: a stable, versioned document (schema in docs/bench.md).

Compatibility: within one `version`, fields are only ever added, never renamed or removed;
readers should ignore fields they do not know. Times are seconds unless a name ends in `_ms`;
money is integer micro-dollars (`micro_usd`) with float USD conveniences beside it.
"""

from __future__ import annotations

import json
import math
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tokenfactory.bench.serve.client import RequestRecord
from tokenfactory.bench.serve.metrics import Slo, cost_micro_usd, summarize_run, tier_of
from tokenfactory.bench.serve.runner import RunResult
from tokenfactory.bench.serve.tasks import tasks_doc
from tokenfactory.tiers import TierCatalog

SCHEMA = "tokenfactory.bench.serve"
VERSION = 1


def _tool_version() -> str:
    try:
        return version("tokenfactory")
    except PackageNotFoundError:
        return "unknown"


def _num(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(x, digits)


def request_row(r: RequestRecord, catalog: TierCatalog, with_itl: bool) -> dict:
    row = {
        "id": r.id,
        "tier": tier_of(r, catalog),
        "requested_tier": r.tier,
        "delivered_tier": r.delivered_tier,
        "session": r.session,
        "step": r.step,
        "start_s": _num(r.start),
        "end_s": _num(r.start + r.e2el) if r.e2el is not None else None,
        "ttft_s": _num(r.ttft),
        "tpot_s": _num(r.tpot),
        "e2el_s": _num(r.e2el),
        "decode_tokens_per_s": _num(r.decode_tps, 3),
        "planned_input_tokens": r.planned_input_tokens,
        "max_tokens": r.max_tokens,
        "prompt_tokens": r.prompt_tokens,
        "cached_tokens": r.cached_tokens,
        "output_tokens": r.output_tokens,
        "content_chunks": r.chunks,
        "finish_reason": r.finish_reason,
        "ok": r.ok,
        "error_kind": r.error_kind,
        "error_type": r.error_type,
        "error_status": r.error_status,
        "error_message": r.error_message,
        "retry_after": r.retry_after,
        "cost_micro_usd": cost_micro_usd(r, catalog),
    }
    if r.task_id is not None:
        row["task_id"] = r.task_id
    if with_itl:
        row["itl_s"] = [round(g, 6) for g in r.itl]
    return row


def run_doc(res: RunResult, catalog: TierCatalog, slo: Slo | None, with_itl: bool) -> dict:
    rate = res.point.request_rate
    doc = {
        "label": res.point.label,
        "request_rate": None if math.isinf(rate) else rate,
        "max_concurrency": res.point.max_concurrency,
        "started_utc": res.started_utc,
        "duration_s": round(res.duration_s, 6),
        "clamped_requests": res.clamped,
        "summary": summarize_run(res.records, res.duration_s, catalog, slo),
        "requests": [request_row(r, catalog, with_itl) for r in res.records],
    }
    tasks = tasks_doc(res.records, catalog, res.ledger_task_costs)
    if tasks is not None:  # requests sent with task ids (the agent workload)
        doc["tasks"] = tasks
    return doc


def build_report(
    config: dict,
    endpoint: dict,
    catalog: TierCatalog,
    results: list[RunResult],
    slo: Slo | None = None,
    with_itl: bool = False,
) -> dict:
    return {
        "schema": SCHEMA,
        "version": VERSION,
        "tool": {"name": "tokenfactory", "version": _tool_version()},
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "endpoint": endpoint,
        "config": config,
        "tiers": {
            "source": catalog.source,
            "preset": catalog.preset,
            "default_tier": catalog.default_tier,
            "data": [
                {
                    "name": t.name,
                    "rank": t.rank,
                    "tokens_per_s": t.tokens_per_s,
                    "ttft_s": t.ttft_s,
                    "price_micro_usd_per_mtok": {
                        "input": t.input_price,
                        "cached_input": t.cached_input_price,
                        "output": t.output_price,
                    },
                }
                for t in catalog.tiers
            ],
        },
        "runs": [run_doc(r, catalog, slo, with_itl) for r in results],
    }


def write_json(doc: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))


def load_report(path: Path) -> dict:
    doc = json.loads(Path(path).read_text("utf-8"))
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a bench serve report (schema {doc.get('schema')!r})")
    if doc.get("version") != VERSION:
        raise ValueError(f"{path}: report version {doc.get('version')}, this reads {VERSION}")
    return doc
