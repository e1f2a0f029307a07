"""Token-length distributions: `128` (fixed), `64..256` (uniform), `lognormal:160,0.9`."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class LengthDist:
    kind: str  # fixed | uniform | lognormal
    a: float  # fixed: value; uniform: low; lognormal: mean
    b: float = 0.0  # uniform: high; lognormal: sigma of the underlying normal
    lo: int = 1  # clamp
    hi: int = 1_000_000

    @classmethod
    def parse(cls, spec: str, lo: int = 1, hi: int = 1_000_000) -> LengthDist:
        text = spec.strip()
        try:
            if text.startswith("lognormal:"):
                mean, _, sigma = text.removeprefix("lognormal:").partition(",")
                dist = cls("lognormal", float(mean), float(sigma or 0.8), lo, hi)
            elif ".." in text:
                low, _, high = text.partition("..")
                dist = cls("uniform", int(low), int(high), lo, hi)
            else:
                dist = cls("fixed", int(text), 0, lo, hi)
        except ValueError:
            raise ValueError(
                f"bad length {spec!r}: use N, MIN..MAX or lognormal:MEAN,SIGMA"
            ) from None
        if dist.a < 0 or dist.b < 0 or (dist.kind == "uniform" and dist.b < dist.a):
            raise ValueError(f"bad length {spec!r}: lengths must be >= 0 and MIN <= MAX")
        return dist

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            n = int(self.a)
        elif self.kind == "uniform":
            n = rng.randint(int(self.a), int(self.b))
        else:  # lognormal with the given arithmetic mean
            mu = math.log(max(self.a, 1e-9)) - self.b**2 / 2
            n = round(rng.lognormvariate(mu, self.b))
        return min(max(n, self.lo), self.hi)

    @property
    def mean(self) -> float:
        return self.a if self.kind != "uniform" else (self.a + self.b) / 2

    def __str__(self) -> str:
        if self.kind == "fixed":
            return str(int(self.a))
        if self.kind == "uniform":
            return f"{int(self.a)}..{int(self.b)}"
        return f"lognormal:{self.a:g},{self.b:g}"
