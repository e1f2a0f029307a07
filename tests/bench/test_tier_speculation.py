"""`bench serve` reads each tier's speculation from /v1/tiers, tolerating its absence."""

from __future__ import annotations

from rich.console import Console

from tokenfactory.bench.serve.console import print_tier_speculation
from tokenfactory.bench.serve.tiers_info import TierSpeculation, parse_tier_speculation


def test_tiers_with_and_without_speculation() -> None:
    doc = {
        "data": [
            {
                "name": "fast",
                "speculation": {
                    "proposer": "ngram",
                    "acceptance": 0.62,
                    "relies_on_speculation": True,
                },
            },
            {"name": "free", "speculation": None},
        ]
    }
    spec = parse_tier_speculation(doc)
    assert spec == {"fast": TierSpeculation("ngram", 0.62, True), "free": None}
    console = Console(record=True, width=120)
    print_tier_speculation(spec, console)
    text = console.export_text()
    assert "ngram" in text and "62.0%" in text and "off" in text


def test_endpoint_without_the_field() -> None:
    assert parse_tier_speculation({"data": [{"name": "free"}]}) is None
    assert parse_tier_speculation({}) is None
    console = Console(record=True)
    print_tier_speculation(None, console)
    assert "not reported" in console.export_text()


def test_acceptance_may_be_unknown_yet() -> None:
    doc = {"data": [{"name": "fast", "speculation": {"proposer": "draft", "acceptance": None}}]}
    assert parse_tier_speculation(doc) == {"fast": TierSpeculation("draft", None, False)}
