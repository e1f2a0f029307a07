from __future__ import annotations

import json
import stat

import pytest

from tokenfactory.billing import (
    Billing,
    BillingInputError,
    InvalidApiKeyError,
    KeyNotFoundError,
    TierNotAllowedError,
)


def test_create_then_authenticate_returns_the_key(billing: Billing):
    key, raw = billing.create_key("alice", "high", account="acme", budget_micro_usd=5_000_000,
                                  rpm=60, tpm=10_000)
    assert raw.startswith("tf-") and len(raw) == 46
    assert raw.startswith(key.prefix) and len(key.prefix) == 11
    assert key.account == "acme" and key.tier == "high" and not key.revoked
    got = billing.authenticate(raw)
    assert got.key_id == key.key_id
    assert (got.rpm, got.tpm, got.budget_micro_usd) == (60, 10_000, 5_000_000)


def test_account_defaults_to_the_key_name(billing: Billing):
    key, _ = billing.create_key("bob", "standard")
    assert key.account == "bob"


def test_raw_keys_are_never_stored(billing: Billing, data_dir):
    raws = [billing.create_key(f"k{i}", "standard")[1] for i in range(3)]
    billing.close()
    blob = b"".join(p.read_bytes() for p in data_dir.glob("ledger.db*"))
    assert blob  # the database and its WAL exist
    for raw in raws:
        assert raw.encode() not in blob
        assert raw[11:].encode() not in blob  # not even the part past the shown prefix


@pytest.mark.parametrize("raw", [None, "", "sk-abc", "tf-short", "tf-" + "!" * 43])
def test_missing_or_malformed_keys_are_refused(billing: Billing, raw):
    with pytest.raises(InvalidApiKeyError) as info:
        billing.authenticate(raw)
    assert info.value.status_code == 401 and info.value.code == "invalid_api_key"


def test_an_unknown_well_formed_key_is_refused(billing: Billing):
    from tokenfactory.billing.keys import new_raw_key

    with pytest.raises(InvalidApiKeyError):
        billing.authenticate(new_raw_key())


def test_revoke_by_prefix_or_id_takes_effect_at_once(billing: Billing):
    key, raw = billing.create_key("alice", "high")
    billing.authenticate(raw)  # cached now
    revoked = billing.revoke_key(key.prefix)
    assert revoked.revoked and revoked.key_id == key.key_id
    with pytest.raises(InvalidApiKeyError, match="revoked"):
        billing.authenticate(raw)
    assert billing.revoke_key(key.key_id).revoked  # again: harmless
    assert [k.revoked for k in billing.list_keys()] == [True]


def test_revocation_by_another_process_is_seen_after_the_cache_ttl(catalog, data_dir):
    server = Billing.open(catalog, data_dir=data_dir, progress_interval_s=0, auth_cache_ttl_s=0)
    cli = Billing.open(catalog, data_dir=data_dir, progress_interval_s=0)
    key, raw = cli.create_key("alice", "high")
    assert server.authenticate(raw).key_id == key.key_id
    cli.revoke_key(key.key_id)
    with pytest.raises(InvalidApiKeyError):
        server.authenticate(raw)
    server.close()
    cli.close()


def test_unknown_and_ambiguous_keys_are_clear_errors(billing: Billing):
    with pytest.raises(KeyNotFoundError):
        billing.revoke_key("key_nope")
    with pytest.raises(KeyNotFoundError):
        billing.revoke_key("tf-")  # too short to mean one key


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "x", "tier": "platinum"},
        {"name": "", "tier": "high"},
        {"name": "x", "tier": "high", "budget_micro_usd": -1},
        {"name": "x", "tier": "high", "rpm": 0},
        {"name": "x", "tier": "high", "tpm": -5},
    ],
)
def test_bad_key_arguments_are_input_errors(billing: Billing, kwargs):
    with pytest.raises(BillingInputError):
        billing.create_key(**kwargs)


def test_a_key_may_use_its_tier_and_slower_ones_only(billing: Billing):
    key, _ = billing.create_key("alice", "high")
    for tier in ("free", "standard", "high"):
        billing.check_tier(key, tier)
    for tier in ("ultra", "super", "nonsense"):
        with pytest.raises(TierNotAllowedError) as info:
            billing.check_tier(key, tier)
        assert info.value.allowed == ["free", "standard", "high"]
        assert info.value.tier == tier and info.value.status_code == 403


def test_bootstrap_makes_one_private_key_per_tier_once(billing: Billing, data_dir, catalog):
    keys = billing.bootstrap_local_keys()
    assert keys is not None and list(keys) == catalog.names
    path = data_dir / "local-keys.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == keys
    for tier, raw in keys.items():
        key = billing.authenticate(raw)
        assert (key.account, key.name, key.tier) == ("local", f"local-{tier}", tier)
        assert key.budget_micro_usd is None and key.rpm is None and key.tpm is None
    assert billing.bootstrap_local_keys() is None
    billing.close()
    again = Billing.open(catalog, data_dir=data_dir, progress_interval_s=0)
    assert again.bootstrap_local_keys() is None
    assert len(again.list_keys(account="local")) == len(catalog.names)
    again.close()
