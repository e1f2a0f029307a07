"""The open tiers file the HTTP benchmarks serve with: every shipped tier, trivially keepable."""

import tomllib

from tokenfactory.bench.local_factory import copy_probe, open_tiers_toml
from tokenfactory.tiers import load_tiers, parse_tiers


def test_open_tiers_keep_the_shipped_names_and_promise_almost_nothing():
    catalog = parse_tiers(tomllib.loads(open_tiers_toml()), "cpu")
    assert catalog.names == load_tiers().names
    assert all(t.tokens_per_s <= 0.01 and t.ttft_s >= 3600 for t in catalog.tiers)
    shipped = load_tiers()
    for t in catalog.tiers:  # same prices, so billing checks against the shipped file hold
        s = shipped[t.name]
        assert (t.input_price, t.cached_input_price, t.output_price, t.sheddable) == (
            s.input_price, s.cached_input_price, s.output_price, s.sheddable)


def test_copy_probe_takes_only_the_cached_hardware_probe(tmp_path):
    src, dst = tmp_path / "a", tmp_path / "b"
    src.mkdir()
    dst.mkdir()
    (src / "capacity-cpu-smollm.json").write_text('{"decode": 1}')
    (src / "ledger.sqlite").write_text("not a probe")
    copy_probe(src, dst)
    assert [p.name for p in dst.iterdir()] == ["capacity-cpu-smollm.json"]
    assert (dst / "capacity-cpu-smollm.json").read_text() == '{"decode": 1}'

