"""`tokenfactory bench perplexity`: what a weight quantization costs in quality.

The model's perplexity on an English text shipped in the package (`data/perplexity_text.txt`:
the Declaration of Independence, the Gettysburg Address and Lincoln's Second Inaugural
Address, all public domain, about 2.9k tokens with the embedded model's tokenizer), first
with the weights as the engine loads them in the chosen dtype, then quantized (`--quantization
fp8`), and the relative difference of the two. Both models are built by the engine's own
`build_model` from one loaded copy of the files, and scored by the one forward, with dense
causal attention over non-overlapping windows.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from importlib import resources

import torch
import torch.nn.functional as F

from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.model_setup import build_model, fp8_calibration_ids
from tokenfactory.models.llama import LlamaForCausalLM
from tokenfactory.models.loader import LoadedModel

TEXT_FILE = "data/perplexity_text.txt"


def shipped_text() -> str:
    return resources.files("tokenfactory").joinpath(TEXT_FILE).read_text("utf-8")


@dataclass(frozen=True)
class Perplexity:
    quantization: str | None
    dtype: str
    tokens_scored: int
    mean_nll: float  # nats per token
    perplexity: float
    weight_bytes: int  # every parameter's storage (FP8 codes and their scales included)
    seconds: float


def weight_bytes(model: LlamaForCausalLM) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


@torch.inference_mode()
def score(model: LlamaForCausalLM, ids: list[int], window: int) -> tuple[float, int]:
    """(summed negative log-likelihood, tokens scored) of `ids`: each window of `window`
    tokens predicts its tokens after the first from those before them in the window."""
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = torch.tensor(ids[start : start + window], device=model.device)
        if chunk.numel() < 2:
            break
        logits = model.forward_dense(chunk[:-1]).float()
        total += float(F.cross_entropy(logits, chunk[1:], reduction="sum"))
        count += chunk.numel() - 1
    return total, count


def measure(
    loaded: LoadedModel,
    config: EngineConfig,
    ids: list[int],
    window: int,
    calibration_ids: list[int] | None = None,
) -> Perplexity:
    """Build the model under `config` (FP8 weights smoothed on `calibration_ids`, if given),
    then score `ids`."""
    model = build_model(loaded.config, config, loaded.state_dict, calibration_ids)
    t0 = time.perf_counter()
    nll, n = score(model, ids, window)
    seconds = time.perf_counter() - t0
    result = Perplexity(
        quantization=config.quantization,
        dtype=str(model.dtype).replace("torch.", ""),
        tokens_scored=n,
        mean_nll=nll / n,
        perplexity=math.exp(nll / n),
        weight_bytes=weight_bytes(model),
        seconds=seconds,
    )
    del model
    return result


@dataclass(frozen=True)
class PerplexityComparison:
    model: str
    text: str
    window: int
    baseline: Perplexity
    quantized: Perplexity | None

    @property
    def relative_difference(self) -> float | None:
        """(quantized - baseline) / baseline perplexity; None without a quantized run."""
        if self.quantized is None:
            return None
        return (self.quantized.perplexity - self.baseline.perplexity) / self.baseline.perplexity

    def to_dict(self) -> dict:
        out = asdict(self)
        out["relative_difference"] = self.relative_difference
        return out


def compare(
    loaded: LoadedModel,
    config: EngineConfig,
    quantization: str | None,
    max_tokens: int | None = None,
    window: int = 1024,
    smoothing: bool = True,
    calibration_text: str | None = None,
) -> PerplexityComparison:
    """Perplexity on the shipped text (its first `max_tokens` tokens if given) with the
    weights in `config.dtype`, and with them quantized if `quantization` is set. FP8 weights
    are smoothed as the engine smooths them (on the shipped calibration text, or on
    `calibration_text`), or not at all without `smoothing`."""
    if window < 2:
        raise ValueError("the window must hold at least 2 tokens")
    if loaded.tokenizer is None:
        raise ValueError("perplexity needs a model with a tokenizer")
    ids = loaded.tokenizer.encode(shipped_text())
    if max_tokens is not None:
        if max_tokens < 2:
            raise ValueError("max_tokens must be at least 2")
        ids = ids[:max_tokens]
    base_config = EngineConfig(**{**asdict(config), "quantization": None})
    baseline = measure(loaded, base_config, ids, window)
    quantized = None
    if quantization is not None:
        q_config = EngineConfig(**{**asdict(config), "quantization": quantization})
        calibration = None
        if smoothing:
            calibration = (
                fp8_calibration_ids(q_config, loaded.tokenizer)
                if calibration_text is None
                else loaded.tokenizer.encode(calibration_text)
            )
            if not calibration:
                raise ValueError("the calibration text is empty")
        quantized = measure(loaded, q_config, ids, window, calibration)
    name = loaded.config.name or loaded.config.architecture
    return PerplexityComparison(name, TEXT_FILE, window, baseline, quantized)
