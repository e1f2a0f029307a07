from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import update

from tokenfactory.billing import Billing, BillingInputError
from tokenfactory.billing.db import LedgerRow
from tokenfactory.billing.reports import month_bounds

from .conftest import settle_simple


def bill(billing, key, rid, tier_name, delivered, prompt, cached, completion, when, catalog):
    res = billing.admit(key, request_id=rid, model="m", tier=catalog[tier_name],
                        prompt_tokens=prompt, max_completion_tokens=completion)
    entry = settle_simple(billing, res, catalog[delivered], prompt=prompt, cached=cached,
                          completion=completion)
    with billing.engine.begin() as conn:
        conn.execute(update(LedgerRow).where(LedgerRow.request_id == rid).values(
            finished_at=when, created_at=when))
    return entry


@pytest.fixture
def filled(billing: Billing, catalog):
    a, _ = billing.create_key("a", "ultra", account="acme")
    b, _ = billing.create_key("b", "high", account="acme")
    c, _ = billing.create_key("c", "high", account="other")
    rows = [
        (a, "1", "ultra", "ultra", 1000, 0, 100, datetime(2026, 10, 31, 23, 59)),
        (a, "2", "ultra", "high", 1000, 500, 100, datetime(2026, 11, 1, 0, 0)),
        (b, "3", "high", "high", 200, 0, 50, datetime(2026, 11, 1, 12, 0)),
        (b, "4", "high", "standard", 300, 100, 60, datetime(2026, 11, 2, 8, 0)),
        (c, "5", "high", "high", 10, 0, 10, datetime(2026, 11, 2, 9, 0)),
    ]
    entries = {r[1]: bill(billing, *r[:7], r[7], catalog) for r in rows}
    return {"a": a, "b": b, "c": c, "entries": entries}


def test_usage_by_tier_day_key_and_day_tier(billing: Billing, filled):
    e = filled["entries"]
    by_tier = {r.tier: r for r in billing.usage(account="acme")}
    assert set(by_tier) == {"ultra", "high", "standard"}
    assert by_tier["high"].requests == 2
    assert by_tier["high"].prompt_tokens == 1200 and by_tier["high"].cached_tokens == 500
    assert by_tier["high"].amount_micro_usd == e["2"].amount_micro_usd + e["3"].amount_micro_usd
    by_day = billing.usage(account="acme", by="day")
    assert [(r.day, r.requests) for r in by_day] == [
        ("2026-10-31", 1), ("2026-11-01", 2), ("2026-11-02", 1)]
    by_key = {r.key_id: r.requests for r in billing.usage(by="key")}
    assert by_key == {filled["a"].key_id: 2, filled["b"].key_id: 2, filled["c"].key_id: 1}
    day_tier = billing.usage(key_id=filled["b"].key_id, by="day_tier")
    assert [(r.day, r.tier) for r in day_tier] == [
        ("2026-11-01", "high"), ("2026-11-02", "standard")]
    total = sum(r.amount_micro_usd for r in billing.usage(by="key"))
    assert total == sum(x.amount_micro_usd for x in e.values())


def test_usage_since_a_date_or_datetime(billing: Billing, filled):
    assert sum(r.requests for r in billing.usage(since=date(2026, 11, 1))) == 4
    assert sum(r.requests for r in billing.usage(
        since=datetime(2026, 11, 1, 12, 0, tzinfo=UTC))) == 3
    assert billing.usage(since=date(2027, 1, 1)) == []
    with pytest.raises(BillingInputError):
        billing.usage(by="week")


def test_invoice_lines_per_tier_and_a_total(billing: Billing, filled, catalog):
    e = filled["entries"]
    inv = billing.invoice("acme", "2026-11")
    assert [ln.tier for ln in inv.lines] == ["standard", "high"]  # slowest first; "1" is October
    high = inv.lines[1]
    assert high.requests == 2
    assert (high.input_tokens, high.cached_input_tokens, high.output_tokens) == (700, 500, 150)
    assert high.output_price == catalog["high"].output_price
    assert inv.total_micro_usd == sum(e[k].amount_micro_usd for k in ("2", "3", "4"))
    october = billing.invoice("acme", "2026-10")
    assert october.total_micro_usd == e["1"].amount_micro_usd
    assert billing.invoice("nobody", "2026-11").lines == ()


def test_invoice_csv_and_json(billing: Billing, filled):
    inv = billing.invoice("acme", "2026-11")
    rows = list(csv.DictReader(io.StringIO(inv.to_csv())))
    assert [r["tier"] for r in rows] == ["standard", "high", "TOTAL"]
    assert int(rows[-1]["amount_micro_usd"]) == inv.total_micro_usd
    assert sum(int(r["amount_micro_usd"]) for r in rows[:-1]) == inv.total_micro_usd
    assert rows[1]["output_usd_per_mtok"] == "6"
    doc = json.loads(inv.to_json())
    assert doc["account"] == "acme" and doc["month"] == "2026-11" and doc["currency"] == "USD"
    assert doc["total_micro_usd"] == inv.total_micro_usd
    assert doc["period_start"] == "2026-11-01T00:00:00+00:00"
    assert doc["period_end"] == "2026-12-01T00:00:00+00:00"
    assert len(doc["lines"]) == 2


@pytest.mark.parametrize("month", ["2026-13", "2026-1", "nov", "2026-00", ""])
def test_bad_months_are_input_errors(month):
    with pytest.raises(BillingInputError):
        month_bounds(month)


def test_december_ends_in_january():
    assert month_bounds("2026-12")[1] == datetime(2027, 1, 1, tzinfo=UTC)
