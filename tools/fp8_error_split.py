"""Where FP8's perplexity loss comes from: the weights' rounding, or the activations'.

`tokenfactory bench perplexity --quantization fp8` rounds both operands of every layer linear
to e4m3 (weights per output channel, activations per token). This scores the shipped text
with each rounding alone, on the engine's own FP8 models:

- weights only: each FP8 linear's codes times its scales, put back as a bf16 weight, with
  bf16 activations (what a weight-only FP8 kernel computes);
- weights only, one scale per block of 32 inputs instead of per channel (the finest scaling
  e4m3 weights could take), from the bf16 weights;
- both (the shipped FP8 route), for reference;

each with and without the activation smoothing the engine applies (models.fp8_smoothing).
The embedded model's bf16 weights are the GGUF's Q4_1 blocks dequantized: near a block's
largest weights e4m3's step (1/16 to 1/8 of the value) is about the size of that grid's own
step (2/15 of a symmetric block's range), so rounding them again adds an error of Q4_1's own
size there.

    .venv/bin/python tools/fp8_error_split.py [--window 1024]
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from tokenfactory.bench.perplexity import score, shipped_text
from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.model_setup import build_model, fp8_calibration_ids
from tokenfactory.kernels.fp8_linear import FP8, FP8_MAX
from tokenfactory.models import llama
from tokenfactory.models.llama import LlamaForCausalLM
from tokenfactory.models.loader import load_model_files

BLOCK = 32


def fp8_linears(model: LlamaForCausalLM) -> list[llama.Linear]:
    return [m for m in model.modules() if isinstance(m, llama.Linear) and m.fp8 is not None]


def weights_only(model: LlamaForCausalLM) -> int:
    """Every FP8 linear back to a bf16 weight holding exactly its FP8 value (codes x scale):
    the activations stay bf16. Returns how many linears changed."""
    linears = fp8_linears(model)
    for m in linears:
        assert m.fp8 is not None
        m.weight = torch.nn.Parameter(m.fp8.dequantize(model.dtype), requires_grad=False)
        m.fp8 = None
    return len(linears)


def round_blocks(weight: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """The weight rounded to e4m3 with one absmax scale per `block` consecutive inputs."""
    n, k = weight.shape
    if k % block:
        raise ValueError(f"{k} inputs do not split into blocks of {block}")
    w = weight.detach().float().reshape(n, k // block, block)
    scale = (w.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp(min=1e-12)
    return ((w / scale).to(FP8).float() * scale).reshape(n, k).to(weight.dtype)


def block_weights(fp8_model: LlamaForCausalLM, bf16_model: LlamaForCausalLM) -> int:
    """`weights_only`, but each weight rounded per block from `bf16_model`'s weight, scaled
    as the smoothing scaled the FP8 one. Its factor per input column is the norm that feeds
    the linear: its bf16 weight over the smoothed one (none where nothing was smoothed)."""
    source = dict(bf16_model.named_modules())
    target = dict(fp8_model.named_modules())
    norm_of = {"qkv_proj": "input_layernorm", "gate_up_proj": "post_attention_layernorm"}
    count = 0
    for name, m in target.items():
        if not (isinstance(m, llama.Linear) and m.fp8 is not None):
            continue
        weight = source[name].weight.detach().float()
        prefix, _, leaf = name.rpartition(".")
        if leaf in norm_of:
            norm = f"{prefix}.{norm_of[leaf]}" if prefix else norm_of[leaf]
            before = source[norm].weight.detach().float()
            after = target[norm].weight.detach().float()
            if not torch.equal(before, after):
                weight = weight * (before / after)[None, :]
        m.weight = torch.nn.Parameter(round_blocks(weight).to(fp8_model.dtype), requires_grad=False)
        m.fp8 = None
        count += 1
    return count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--window", type=int, default=1024)
    args = ap.parse_args()
    loaded = load_model_files(None)
    assert loaded.tokenizer is not None
    ids = loaded.tokenizer.encode(shipped_text())
    config = EngineConfig()
    fp8_config = EngineConfig(quantization="fp8")
    calibration = fp8_calibration_ids(fp8_config, loaded.tokenizer)

    def perplexity(model: LlamaForCausalLM) -> float:
        nll, n = score(model, ids, args.window)
        return math.exp(nll / n)

    bf16_model = build_model(loaded.config, config, loaded.state_dict)
    bf16 = perplexity(bf16_model)
    rows: dict[str, float] = {"bf16": bf16}
    for smoothed in (False, True):
        label = "smoothed" if smoothed else "not smoothed"
        cal = calibration if smoothed else None

        def fp8_model(cal: list[int] | None = cal) -> LlamaForCausalLM:
            return build_model(loaded.config, fp8_config, loaded.state_dict, cal)

        rows[f"FP8 weights and activations, {label}"] = perplexity(fp8_model())
        model = fp8_model()
        weights_only(model)
        rows[f"FP8 weights per channel only, {label}"] = perplexity(model)
        model = fp8_model()
        block_weights(model, bf16_model)
        rows[f"FP8 weights per block of {BLOCK} only, {label}"] = perplexity(model)
    width = max(len(k) for k in rows)
    for name, ppl in rows.items():
        print(f"{name:<{width}}  {ppl:8.3f}  {ppl / bf16 - 1:+7.2%}")
    print(json.dumps({"tokens": len(ids), "window": args.window, "perplexity": rows}, indent=2))


if __name__ == "__main__":
    main()
