"""Tier catalog: parsing, prices in micro-dollars, service_tier mapping, tier delivered."""

import pytest

from tokenfactory.tiers import TierError, UnknownTierError, decode_speed, load_tiers, parse_tiers


@pytest.fixture(scope="module")
def cpu():
    return load_tiers(preset="cpu")


def test_shipped_tiers_in_order_with_prices(cpu):
    assert cpu.names == ["free", "standard", "high", "ultra", "super"]
    assert cpu["standard"].output_price == 3_000_000  # $3 per million = 3 micro-dollars a token
    assert cpu["super"].output_price == 150_000_000
    assert cpu["free"].sheddable and not cpu["super"].sheddable
    speeds = [t.tokens_per_s for t in cpu.tiers]
    assert speeds == sorted(speeds)
    gpu = load_tiers(preset="gpu")
    assert gpu["super"].tokens_per_s > cpu["super"].tokens_per_s


def test_cost_is_exact_and_rounds_up(cpu):
    sup = cpu["super"]
    # 500 uncached at $37.5/M + 500 cached at $3.75/M + 100 out at $150/M
    assert sup.cost_micro_usd(1000, 500, 100) == 18_750 + 1_875 + 15_000
    assert cpu["standard"].cost_micro_usd(1, 0, 0) == 1  # 0.75 micro-dollars rounds up
    assert cpu["free"].cost_micro_usd(10_000, 0, 10_000) == 0
    assert sup.cost_micro_usd(10, 50, 0) == sup.cost_micro_usd(10, 10, 0)  # cached <= prompt


@pytest.mark.parametrize(
    "value,key_default,expected",
    [
        (None, "high", "high"),
        ("auto", "ultra", "ultra"),
        ("default", "super", "standard"),
        ("flex", "super", "free"),
        ("priority", "super", "high"),
        ("super", "free", "super"),
    ],
)
def test_service_tier_mapping(cpu, value, key_default, expected):
    assert cpu.resolve(value, key_default).name == expected


def test_unknown_service_tier_names_the_choices(cpu):
    with pytest.raises(UnknownTierError, match="standard"):
        cpu.resolve("platinum")


def test_delivered_tier_falls_to_the_best_promise_kept(cpu):
    # super promises 25 tok/s and 1 s TTFT on the cpu preset; ultra 15 tok/s and 2 s
    assert cpu.delivered("super", 0.5, 30.0).name == "super"
    assert cpu.delivered("super", 0.5, 18.0).name == "ultra"
    assert cpu.delivered("super", 1.5, 30.0).name == "ultra"  # TTFT missed super's promise
    assert cpu.delivered("high", 0.5, 100.0).name == "high"  # never above what was asked
    assert cpu.delivered("super", None, None).name == "free"  # no first token at all
    assert cpu.delivered("standard", 0.1, None).name == "standard"  # one token: TTFT only
    assert cpu.delivered("super", 100.0, 0.01).name == "free"


def test_decode_speed():
    assert decode_speed(11, 1.0, 2.0) == pytest.approx(10.0)
    assert decode_speed(1, 1.0, 2.0) is None
    assert decode_speed(5, None, 2.0) is None


def _doc(**over):
    doc = {
        "default_tier": "a",
        "tiers": {"a": {"output_usd_per_mtok": "1"}, "b": {"output_usd_per_mtok": "2"}},
        "presets": {"x": {"a": {"tokens_per_s": 1, "ttft_s": 1}, "b": {"tokens_per_s": 2,
                                                                        "ttft_s": 1}}},
    }
    doc.update(over)
    return doc


def test_custom_file_and_errors(tmp_path):
    cat = parse_tiers(_doc(), "x")
    assert cat.names == ["a", "b"] and cat["b"].rank == 1
    with pytest.raises(TierError, match="no preset"):
        parse_tiers(_doc(), "gpu")
    bad = _doc()
    bad["tiers"]["a"]["output_usd_per_mtok"] = "-1"
    with pytest.raises(TierError, match=">= 0"):
        parse_tiers(bad, "x")
    bad = _doc()
    bad["tiers"]["a"]["output_usd_per_mtok"] = "0.0000001"
    with pytest.raises(TierError, match="finer"):
        parse_tiers(bad, "x")
    bad = _doc()
    bad["presets"]["x"]["b"] = {"tokens_per_s": 0, "ttft_s": 1}
    with pytest.raises(TierError, match="tokens_per_s"):
        parse_tiers(bad, "x")
    bad = _doc(default_tier="zzz")
    with pytest.raises(TierError, match="default_tier"):
        parse_tiers(bad, "x")
    bad = _doc()
    bad["tiers"]["priority"] = {}
    with pytest.raises(TierError, match="reserved"):
        parse_tiers(bad, "x")
    f = tmp_path / "t.toml"
    f.write_text("not [valid")
    with pytest.raises(TierError, match="not valid TOML"):
        load_tiers(f)
    with pytest.raises(TierError, match="cannot read"):
        load_tiers(tmp_path / "missing.toml")


def test_service_terms_carry_the_promise_and_the_slower_tiers_best_first(cpu):
    terms = cpu.service_terms(cpu["ultra"], received_at=3.5)
    assert terms.tier == "ultra" and terms.rank == cpu["ultra"].rank
    assert terms.promise.tokens_per_s == cpu["ultra"].tokens_per_s
    assert terms.promise.ttft_s == cpu["ultra"].ttft_s
    assert terms.promise.output_price == cpu["ultra"].output_price
    assert terms.sheddable is False and terms.received_at == 3.5
    assert [f.ttft_s for f in terms.fallbacks] == [
        cpu[name].ttft_s for name in ("high", "standard", "free")
    ]
    assert terms.levels == (cpu["ultra"].promise, *terms.fallbacks)
    assert cpu.service_terms(cpu["free"]).fallbacks == ()
    assert cpu.service_terms(cpu["free"]).sheddable is True
    assert terms.downgradable is False
    assert cpu.service_terms(cpu["high"], downgradable=True).downgradable is True
