"""Service tiers: what each speed costs and promises, and which tier a request was delivered at.

Plain data, no dependencies on the rest of the factory: the server, billing, the scheduler and
the planner all read the same `TierCatalog`. Prices are integer micro-dollars (1e-6 USD) per
million tokens, parsed from decimal strings so that no float ever touches money.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path

MICRO = 1_000_000  # micro-dollars per dollar, and tokens per "per million" price
TIER_ORDER = ("free", "standard", "high", "ultra", "super")  # shipped names, slowest first

# OpenAI's service_tier values, mapped onto ours; "auto" means the key's default tier.
OPENAI_ALIASES = {"default": "standard", "flex": "free", "priority": "high", "scale": "high"}


def is_auto(service_tier: str | None) -> bool:
    """A request that left the tier to us: `auto`, or no `service_tier` at all."""
    return service_tier is None or service_tier == "auto"


class TierError(ValueError):
    """A tiers file or a service_tier value that cannot be used."""


class UnknownTierError(TierError):
    def __init__(self, value: str, known: list[str]):
        self.value = value
        super().__init__(
            f"unknown service_tier {value!r}; use one of: auto, default, flex, priority, "
            + ", ".join(known)
        )


@dataclass(frozen=True)
class Promise:
    """One promise a request can be billed at: its tier's, or a slower tier's."""

    tokens_per_s: float | None  # decode speed per user; None: best effort
    ttft_s: float | None  # time to first token; None: best effort
    output_price: int  # micro-dollars per million completion tokens


BEST_EFFORT = Promise(None, None, 0)


@dataclass(frozen=True)
class ServiceTerms:
    """What a request was sold, as the scheduler reads it: built by the server from the tier
    catalog (`TierCatalog.service_terms`) and carried on the engine's sequence unchanged.

    `promise` is its tier's; `fallbacks` are the slower tiers' (best first): a request that
    misses its TTFT is billed at the best slower tier whose promise it still keeps, so the
    scheduler paces and values it at that level. A downgraded request (it asked for
    `service_tier=auto` and started at once at a slower tier) keeps its tier and rank, with
    that slower promise and no fallbacks."""

    tier: str
    rank: int  # 0 = slowest/cheapest
    promise: Promise
    fallbacks: tuple[Promise, ...] = ()
    sheddable: bool = False  # may be refused at once under overload
    downgradable: bool = False  # may start at once at a slower tier instead of waiting
    received_at: float | None = None  # when the server received it (monotonic clock)

    @property
    def levels(self) -> tuple[Promise, ...]:
        """Its promise, then the fallbacks: what it can be billed at, best first."""
        return (self.promise, *self.fallbacks)


@dataclass(frozen=True)
class Tier:
    name: str
    rank: int  # 0 = slowest/cheapest; a higher rank is a faster, dearer tier
    description: str
    input_price: int  # micro-dollars per million prompt tokens not served from cache
    cached_input_price: int  # micro-dollars per million prompt tokens served from cache
    output_price: int  # micro-dollars per million completion tokens
    tokens_per_s: float  # promised decode speed per user (p50 over requests)
    ttft_s: float  # promised time to first token (p95 over requests)
    sheddable: bool  # may be refused at once under overload

    def cost_micro_usd(self, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> int:
        """Exact price of a request at this tier, rounded up to a whole micro-dollar."""
        cached = min(cached_tokens, prompt_tokens)
        numerator = (
            (prompt_tokens - cached) * self.input_price
            + cached * self.cached_input_price
            + completion_tokens * self.output_price
        )
        return -(-numerator // MICRO)

    def keeps_promise(self, ttft_s: float | None, tokens_per_s: float | None) -> bool:
        """Whether one request's measured TTFT and decode speed meet this tier's promise.

        A request with no first token (an error before it) met no speed promise; one with a
        single token has no decode speed to judge, so only its TTFT counts.
        """
        if ttft_s is None or ttft_s > self.ttft_s:
            return False
        return tokens_per_s is None or tokens_per_s >= self.tokens_per_s

    @property
    def promise(self) -> Promise:
        return Promise(self.tokens_per_s, self.ttft_s, self.output_price)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "rank": self.rank,
            "description": self.description,
            "tokens_per_s": self.tokens_per_s,
            "ttft_s": self.ttft_s,
            "sheddable": self.sheddable,
            "price_usd_per_mtok": {
                "input": _usd(self.input_price),
                "cached_input": _usd(self.cached_input_price),
                "output": _usd(self.output_price),
            },
            "price_micro_usd_per_mtok": {
                "input": self.input_price,
                "cached_input": self.cached_input_price,
                "output": self.output_price,
            },
        }


@dataclass(frozen=True)
class TierCatalog:
    tiers: tuple[Tier, ...]  # slowest first
    default_tier: str
    preset: str
    source: str = "built-in"
    _by_name: dict[str, Tier] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name.update({t.name: t for t in self.tiers})

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tiers]

    def __getitem__(self, name: str) -> Tier:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownTierError(name, self.names) from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def service_terms(
        self, tier: Tier, downgradable: bool = False, received_at: float | None = None
    ) -> ServiceTerms:
        """What the engine's scheduler is told about a request of `tier`: its rank, promise,
        price and sheddability, and the slower tiers it is billed at if it misses its promise
        (best first), so the scheduler can weigh what a late request is still worth.
        `downgradable` (the request asked for `service_tier=auto`): rather than wait for its
        tier, it may start at once at a slower one."""
        lower = sorted((t for t in self.tiers if t.rank < tier.rank), key=lambda t: -t.rank)
        return ServiceTerms(
            tier=tier.name,
            rank=tier.rank,
            promise=tier.promise,
            fallbacks=tuple(t.promise for t in lower),
            sheddable=tier.sheddable,
            downgradable=downgradable,
            received_at=received_at,
        )

    def resolve(self, service_tier: str | None, key_default: str | None = None) -> Tier:
        """Map a request's `service_tier` (OpenAI's values or ours) onto a tier."""
        if is_auto(service_tier):
            return self[key_default or self.default_tier]
        assert service_tier is not None  # None is auto
        name = OPENAI_ALIASES.get(service_tier, service_tier)
        if name not in self._by_name:
            raise UnknownTierError(service_tier, self.names)
        return self._by_name[name]

    def delivered(self, requested: str, ttft_s: float | None, tokens_per_s: float | None) -> Tier:
        """The tier a request is billed at: the requested one if its promise was kept, else
        the fastest slower tier whose promise was kept, else the slowest tier."""
        asked = self[requested]
        for tier in sorted(self.tiers, key=lambda t: -t.rank):
            if tier.rank <= asked.rank and tier.keeps_promise(ttft_s, tokens_per_s):
                return tier
        return self.tiers[0]


def decode_speed(
    completion_tokens: int, first_token_time: float | None, finished_time: float | None
) -> float | None:
    """A request's decode speed in tokens/s after its first token; None when undefined."""
    if first_token_time is None or finished_time is None or completion_tokens < 2:
        return None
    elapsed = finished_time - first_token_time
    if elapsed <= 0:
        return None
    return (completion_tokens - 1) / elapsed


def load_tiers(path: str | Path | None = None, preset: str = "cpu") -> TierCatalog:
    """Read a tiers TOML file (the shipped one when `path` is None) for one hardware preset."""
    if path is None:
        text = resources.files("tokenfactory").joinpath("data/tiers.toml").read_text("utf-8")
        source = "built-in"
    else:
        try:
            text = Path(path).read_text("utf-8")
        except OSError as exc:
            raise TierError(f"cannot read tiers file {path}: {exc.strerror or exc}") from None
        source = str(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TierError(f"tiers file {source} is not valid TOML: {exc}") from None
    return parse_tiers(doc, preset, source)


def parse_tiers(doc: dict, preset: str, source: str = "<dict>") -> TierCatalog:
    tiers_doc = doc.get("tiers")
    if not isinstance(tiers_doc, dict) or not tiers_doc:
        raise TierError(f"{source}: no [tiers.<name>] tables")
    presets = doc.get("presets", {})
    if preset not in presets:
        raise TierError(
            f"{source}: no preset {preset!r}; it has: {', '.join(presets) or 'none'}"
        )
    promises = presets[preset]
    tiers = []
    for rank, (name, spec) in enumerate(tiers_doc.items()):
        where = f"{source}: tier {name!r}"
        if name == "auto" or name in OPENAI_ALIASES:
            raise TierError(f"{where}: the name is reserved for OpenAI's service_tier values")
        promise = promises.get(name)
        if not isinstance(promise, dict):
            raise TierError(f"{where}: preset {preset!r} gives it no promise")
        tiers.append(
            Tier(
                name=name,
                rank=rank,
                description=str(spec.get("description", "")),
                input_price=_price(spec, "input_usd_per_mtok", where),
                cached_input_price=_price(spec, "cached_input_usd_per_mtok", where),
                output_price=_price(spec, "output_usd_per_mtok", where),
                tokens_per_s=_positive(promise, "tokens_per_s", where),
                ttft_s=_positive(promise, "ttft_s", where),
                sheddable=bool(spec.get("sheddable", False)),
            )
        )
    default = str(doc.get("default_tier", tiers[0].name))
    if default not in {t.name for t in tiers}:
        raise TierError(f"{source}: default_tier {default!r} is not one of the tiers")
    return TierCatalog(tuple(tiers), default, preset, source)


def _price(spec: dict, key: str, where: str) -> int:
    raw = spec.get(key, "0")
    try:
        value = Decimal(str(raw))
    except InvalidOperation:
        raise TierError(f"{where}: {key} = {raw!r} is not a number") from None
    if value < 0 or not value.is_finite():
        raise TierError(f"{where}: {key} must be a price >= 0")
    micro = value * MICRO
    if micro != micro.to_integral_value():
        raise TierError(f"{where}: {key} = {raw} is finer than a micro-dollar per million")
    return int(micro)


def _positive(spec: dict, key: str, where: str) -> float:
    value = spec.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise TierError(f"{where}: {key} must be a number > 0, got {value!r}")
    return float(value)


def _usd(micro_per_mtok: int) -> str:
    return str(Decimal(micro_per_mtok) / MICRO)
