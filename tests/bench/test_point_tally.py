from tokenfactory.bench.point_tally import PointTally
from tokenfactory.bench.policy_compare import markdown, summarize


def report(rate: float, duration: float, tiers: dict, requests: list, micro_usd: int,
           output: int, by_status: dict | None = None, asked: int | None = None) -> dict:
    """The parts of a `bench serve` report that a load point's summary reads."""
    return {"runs": [{
        "request_rate": rate,
        "duration_s": duration,
        "summary": {
            "tiers": {t: {"requests": {"sent": sent}, "promise": {"met": met}}
                      for t, (sent, met) in tiers.items()},
            "overall": {"revenue": {"micro_usd": micro_usd, "at_tier_asked_micro_usd": asked},
                        "tokens": {"output": output},
                        "errors": {"by_status": by_status or {}}},
        },
        "requests": requests,
    }]}


def row(tier: str, ttft: float | None, ok: bool = True) -> dict:
    return {"tier": tier, "ttft_s": ttft, "ok": ok}


def test_one_report_summarises_as_its_own_counts():
    r = report(2.0, 50.0, {"super": (3, 2), "free": (10, 10)},
               [row("super", 0.2), row("super", 0.4), row("super", 0.9), row("free", 1.0),
                row("free", None, ok=False)], micro_usd=1_000_000, output=2500,
               by_status={"429": 1})
    s = summarize(r)
    assert s["rate"] == 2.0 and s["duration_s"] == 50.0 and s["runs"] == 1
    assert s["attainment"] == {"super": 2 / 3, "free": 1.0}
    assert s["revenue_usd_per_s"] == 1.0 / 50 and s["output_tokens_per_s"] == 50.0
    assert s["errors"] == {"429": 1}
    assert abs(s["ttft_p99_s"]["super"] - 0.89) < 1e-9  # numpy's linear p99 of 0.2/0.4/0.9
    assert s["ttft_p99_s"]["free"] == 1.0  # failed requests have no first token


def test_runs_under_several_seeds_pool_their_requests_not_their_shares():
    # 1 of 1 super kept in one run, 0 of 3 in the other: pooled 1 of 4, not the mean 50%.
    a = report(2.0, 60.0, {"super": (1, 1)}, [row("super", 0.1)], 600_000, 1200)
    b = report(2.0, 40.0, {"super": (3, 0), "ultra": (2, 2)},
               [row("super", 2.0), row("super", 3.0), row("super", 4.0), row("ultra", 0.5),
                row("ultra", 0.6)], 400_000, 800, by_status={"429": 2})
    s = summarize(a, b)
    assert s["runs"] == 2 and s["duration_s"] == 100.0
    assert s["attainment"] == {"super": 0.25, "ultra": 1.0}
    assert s["revenue_usd_per_s"] == 1.0 / 100 and s["output_tokens_per_s"] == 20.0
    assert s["errors"] == {"429": 2}
    assert s["ttft_p99_s"]["super"] > 3.9  # over all four first tokens


def test_a_tally_adds_requests_one_by_one():
    t = PointTally(rate=1.0, duration_s=10.0, runs=1)
    t.request("high", kept=True, ttft_s=0.5)
    t.request("high", kept=False)  # no first token
    t.add(PointTally(rate=1.0, duration_s=10.0, runs=1))
    s = t.summary()
    assert s["attainment"] == {"high": 0.5} and s["runs"] == 2
    assert s["ttft_p99_s"] == {"high": 0.5} and s["revenue_usd_per_s"] == 0.0


def test_revenue_at_the_tiers_asked_pools_and_is_absent_for_older_reports():
    a = report(2.0, 60.0, {"super": (1, 1)}, [row("super", 0.1)], 600_000, 1200, asked=600_000)
    b = report(2.0, 40.0, {"super": (1, 0)}, [row("super", 2.0)], 100_000, 800, asked=400_000)
    s = summarize(a, b)
    assert s["revenue_usd_per_s"] == 0.7 / 100
    assert s["revenue_at_tiers_asked_usd_per_s"] == 1.0 / 100
    assert "| 70% |" in markdown({"levels": {"fcfs": {"1.5": s}}})
    old = report(2.0, 40.0, {"super": (1, 0)}, [row("super", 2.0)], 100_000, 800)
    assert summarize(a, old)["revenue_at_tiers_asked_usd_per_s"] is None
    assert "| - |" in markdown({"levels": {"fcfs": {"1.5": summarize(old)}}})
