"""What an operator asks the planner about: demand per tier and the request lengths."""

from __future__ import annotations

import random
from dataclasses import dataclass

from tokenfactory.bench.serve.lengths import LengthDist
from tokenfactory.planner.frontier import Workload
from tokenfactory.tiers import TierCatalog

# Request lengths by default: the policy benchmark's on a CPU (its load, so a plan can be
# checked against `tokenfactory bench policies`), a chat-sized one on a GPU.
DEFAULT_LENGTHS = {
    "cpu": ("lognormal:160,0.6", "lognormal:48,0.5"),
    "gpu": ("lognormal:1000,0.5", "lognormal:250,0.5"),
}
PREFILL_CHUNK = {"cpu": 2048, "gpu": 2048}  # the engine's max_num_batched_tokens


class DemandError(ValueError):
    pass


def parse_demand(text: str, catalog: TierCatalog) -> dict[str, float]:
    """`free=2,standard=1` -> requests/s per tier (every name a tier of the catalog)."""
    out: dict[str, float] = {}
    for part in text.split(","):
        name, eq, value = part.strip().partition("=")
        name = name.strip()
        if not eq or not name:
            raise DemandError(f"bad demand entry {part!r}: use TIER=REQUESTS_PER_S")
        if name not in catalog:
            known = ", ".join(catalog.names)
            raise DemandError(f"unknown tier {name!r} in the demand; known: {known}")
        try:
            rate = float(value)
        except ValueError:
            raise DemandError(f"bad demand entry {part!r}: {value!r} is not a number") from None
        if not 0 <= rate < float("inf"):
            raise DemandError(f"bad demand entry {part!r}: requests/s must be >= 0")
        if name in out:
            raise DemandError(f"tier {name!r} appears twice in the demand")
        out[name] = rate
    if not any(out.values()):
        raise DemandError("the demand asks for nothing: give some tier requests/s > 0")
    return out


@dataclass(frozen=True)
class Lengths:
    """Length distributions as the simulator and `bench policies` take them."""

    input_len: str
    output_len: str

    def workload(self, prefill_chunk: int) -> Workload:
        """Mean lengths, as the load draws them (clamps included)."""
        rng = random.Random(0)
        ins, outs = LengthDist.parse(self.input_len), LengthDist.parse(self.output_len)
        n = 4000
        mean_in = sum(ins.sample(rng) for _ in range(n)) / n
        mean_out = sum(outs.sample(rng) for _ in range(n)) / n
        return Workload(mean_in, max(mean_out, 1.0), prefill_chunk)


def lengths_for(preset: str, input_len: str | None, output_len: str | None) -> Lengths:
    din, dout = DEFAULT_LENGTHS.get(preset, DEFAULT_LENGTHS["gpu"])
    lengths = Lengths(input_len or din, output_len or dout)
    for spec in (lengths.input_len, lengths.output_len):
        try:
            LengthDist.parse(spec)
        except ValueError as exc:
            raise DemandError(str(exc)) from None
    return lengths
