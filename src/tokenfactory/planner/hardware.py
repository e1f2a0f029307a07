"""Hardware presets (data/hardware.toml) and the calibration `plan measure` writes for this
machine: peak rates with their sources, and the fitted efficiencies of the step-time model."""

from __future__ import annotations

import functools
import json
import os
import tomllib
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path

from tokenfactory.planner.perf_model import PerfParams

LOCAL = "local"  # the hardware name of this machine's own calibration


class UnknownHardwareError(ValueError):
    pass


@dataclass(frozen=True)
class Hardware:
    name: str
    description: str
    tier_preset: str  # which promises of tiers.toml apply (cpu or gpu)
    memory_bandwidth_gbs: float
    bf16_tflops: float
    fp8_tflops: float
    memory_gb: float
    power_w: float
    params: PerfParams
    sources: tuple[str, ...] = ()

    def flops_per_s(self, weights: str) -> float:
        return (self.fp8_tflops if weights == "fp8" else self.bf16_tflops) * 1e12

    @property
    def bandwidth(self) -> float:
        return self.memory_bandwidth_gbs * 1e9


_PARAM_FIELDS = (
    "base_s",
    "per_seq_s",
    "memory_efficiency",
    "compute_efficiency",
    "kv_efficiency",
    "prefill_step_s",
    "per_draft_token_s",
)


@functools.cache
def presets() -> dict[str, Hardware]:
    text = resources.files("tokenfactory").joinpath("data/hardware.toml").read_text("utf-8")
    doc = tomllib.loads(text)
    out: dict[str, Hardware] = {}
    for name, entry in doc.items():
        fitted = doc.get(entry.get("fit", name), {})
        params = PerfParams(**{f: float(fitted[f]) for f in _PARAM_FIELDS if f in fitted})
        out[name] = Hardware(
            name=name,
            description=entry["description"],
            tier_preset=entry["tier_preset"],
            memory_bandwidth_gbs=float(entry["memory_bandwidth_gbs"]),
            bf16_tflops=float(entry["bf16_tflops"]),
            fp8_tflops=float(entry["fp8_tflops"]),
            memory_gb=float(entry["memory_gb"]),
            power_w=float(entry["power_w"]),
            params=params,
            sources=tuple(entry.get("sources", ())),
        )
    return out


def default_calibration_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tokenfactory" / "plan-calibration.json"


def hardware(name: str, calibration: Path | None = None) -> Hardware:
    """A preset by name, or `local`: this machine as `tokenfactory plan measure` measured it."""
    if name == LOCAL:
        return read_local(calibration or default_calibration_path())
    known = presets()
    if name not in known:
        raise UnknownHardwareError(
            f"unknown hardware {name!r}; known: {', '.join([*known, LOCAL])}"
        )
    return known[name]


def default_model(name: str, tier_preset: str, calibration: Path | None = None) -> str:
    """The model a plan is about when none is named: the one `plan measure` timed for
    `local`, the embedded one on a CPU, Llama-3.1-8B on a GPU."""
    if name == LOCAL:
        path = calibration or default_calibration_path()
        try:
            return str(json.loads(path.read_text())["shape"])
        except (OSError, ValueError, KeyError):
            pass
    return "smollm2-135m" if tier_preset == "cpu" else "llama-3.1-8b"


def write_local(hw: Hardware, path: Path, extra: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = asdict(hw) | {"schema": "tokenfactory.plan.calibration/1"} | extra
    path.write_text(json.dumps(doc, indent=2))


def read_local(path: Path) -> Hardware:
    if not path.exists():
        raise UnknownHardwareError(
            f"no calibration of this machine at {path}: run `tokenfactory plan measure` first"
        )
    try:
        doc = json.loads(path.read_text())
        params = PerfParams(**doc["params"])
        fields = {k: doc[k] for k in Hardware.__dataclass_fields__ if k not in ("params",)}
        hw = Hardware(**fields | {"params": params, "sources": tuple(doc["sources"])})
    except (ValueError, KeyError, TypeError) as exc:
        raise UnknownHardwareError(f"unreadable calibration {path}: {exc}") from None
    return replace(hw, name=LOCAL)
