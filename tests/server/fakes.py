"""Parts for server tests that run a fake engine: a tokenizer of one id per character, and the
tiers, ledger and capacity a `Factory` needs, with no model files and no probe."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokenfactory.bench.local_factory import open_tiers_toml
from tokenfactory.billing import Billing
from tokenfactory.server.capacity import Capacity, CapacityPoint
from tokenfactory.tiers import TierCatalog, load_tiers


class FakeTokenizer:
    eos_token_ids: list[int] = []

    def apply_chat_template(self, messages, add_generation_prompt=True, tools=None) -> str:
        return " ".join(str(m.get("content", "")) for m in messages)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [1 + ord(c) % 500 for c in text]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "x" * len(ids)


@dataclass
class FactoryParts:
    catalog: TierCatalog
    billing: Billing
    keys: dict[str, str]  # tier -> raw local key
    capacity: Capacity


def factory_parts(data_dir: Path, model: str) -> FactoryParts:
    """Open tiers any machine keeps, a SQLite ledger with a local key per tier, and a capacity
    of one 100 tokens/s point."""
    tiers = data_dir / "tiers.toml"
    data_dir.mkdir(parents=True, exist_ok=True)
    tiers.write_text(open_tiers_toml())
    catalog = load_tiers(str(tiers), "cpu")
    billing = Billing.open(catalog, None, data_dir)
    keys = billing.bootstrap_local_keys() or {}
    point = CapacityPoint(batch=1, step_s=0.01, tokens_per_s_per_user=100.0, tokens_per_s=100.0)
    capacity = Capacity(model, "cpu", "test", "2026-12-06T00:00:00+00:00", [point], 32, 0.1)
    return FactoryParts(catalog, billing, keys, capacity)
