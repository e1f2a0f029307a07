"""Activation smoothing before FP8 quantization (SmoothQuant, Xiao et al., 2023).

FP8 activations are quantized per token, so one channel with a large magnitude takes the whole
row's range and flattens the others. Where a linear's input comes straight from an RMSNorm
(q/k/v after the input norm, gate/up after the post-attention norm), a per-channel factor s can
move that difficulty into the weights at no run-time cost: the norm's weight is divided by s
and the linear's input columns multiplied by it, which leaves the layer's function unchanged in
exact arithmetic. s_j = max|x_j|^alpha / max|w_j|^(1 - alpha): alpha = 0.5 makes the
activation and weight ranges meet halfway. max|x_j| is measured once at load by running the
model on a short calibration text shipped with the package (`data/fp8_calibration_text.txt`:
prose, code, JSON, a table and a chat turn). A search of alpha per layer by the error of each
linear's FP8 product (as AWQ searches its scales) picked 0.7-0.8 and lost more perplexity on
the embedded model than 0.5 everywhere, so alpha is fixed.

The norm keeps the model's dtype, so its rounding is folded back into the weight, which is
scaled in float32 as it is quantized: the smoothed model in high precision is the original one
to float32 rounding.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import resources

import torch

from tokenfactory.models.llama import Linear, LlamaForCausalLM, RMSNorm

CALIBRATION_FILE = "data/fp8_calibration_text.txt"
ALPHA = 0.5  # SmoothQuant's default: the two ranges meet halfway
_TINY = 1e-5  # a channel that never fires (or a zero weight column) is left alone


def calibration_text() -> str:
    return resources.files("tokenfactory").joinpath(CALIBRATION_FILE).read_text("utf-8")


def smoothed_pairs(model: LlamaForCausalLM) -> list[tuple[RMSNorm, Linear]]:
    """The (norm, linear) pairs whose linear reads exactly the norm's output."""
    pairs = []
    for layer in model.decoder_layers:
        pairs.append((layer.input_layernorm, layer.qkv_proj))
        pairs.append((layer.post_attention_layernorm, layer.gate_up_proj))
    return pairs


@contextmanager
def _recording_inputs(linears: Sequence[Linear]) -> Iterator[dict[int, torch.Tensor]]:
    """While open, each linear's per-channel input absmax (by its position in `linears`)."""
    absmax: dict[int, torch.Tensor] = {}

    def recorder(index: int, m: Linear):
        forward = m.forward

        def record(x: torch.Tensor, *args, **kwargs):
            seen = x.detach().reshape(-1, x.shape[-1]).abs().amax(dim=0).float()
            absmax[index] = seen if index not in absmax else torch.maximum(absmax[index], seen)
            return forward(x, *args, **kwargs)

        return record

    for i, m in enumerate(linears):
        m.forward = recorder(i, m)  # type: ignore[method-assign]  # the model calls forward
    try:
        yield absmax
    finally:
        for m in linears:
            del m.forward  # back to the class's method


@torch.inference_mode()
def input_absmax(
    model: LlamaForCausalLM, linears: Sequence[Linear], ids: Sequence[int], window: int = 512
) -> list[torch.Tensor]:
    """Each linear's largest input magnitude per channel over `ids`, run in windows."""
    with _recording_inputs(linears) as absmax:
        for start in range(0, len(ids), window):
            chunk = torch.tensor(list(ids[start : start + window]), device=model.device)
            model.forward_dense(chunk)
    if len(absmax) != len(linears):
        raise RuntimeError("the calibration pass did not reach every smoothed linear")
    return [absmax[i] for i in range(len(linears))]


def smoothing_scales(x_absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """s_j = max|x_j|^alpha / max|w_:,j|^(1 - alpha); 1 where either side is ~0."""
    w_absmax = weight.detach().float().abs().amax(dim=0)
    s = x_absmax.float().clamp(min=_TINY).pow(alpha) / w_absmax.clamp(min=_TINY).pow(1 - alpha)
    idle = (x_absmax <= _TINY) | (w_absmax <= _TINY)
    return torch.where(idle, torch.ones_like(s), s)


@torch.inference_mode()
def smooth(
    model: LlamaForCausalLM, ids: Sequence[int], alpha: float = ALPHA
) -> dict[Linear, torch.Tensor]:
    """Divide each smoothed norm's weight by the factors measured on `ids`, and return, for
    each linear reading it, the factors its weight's input columns must be multiplied by
    (`Linear.use_fp8(input_scale=...)` does it while quantizing, one linear at a time)."""
    if not ids:
        raise ValueError("smoothing needs calibration tokens")
    pairs = smoothed_pairs(model)
    maxima = input_absmax(model, [lin for _, lin in pairs], ids)
    factors: dict[Linear, torch.Tensor] = {}
    for (norm, lin), x_absmax in zip(pairs, maxima, strict=True):
        s = smoothing_scales(x_absmax, lin.weight, alpha)
        old = norm.weight.detach().float()
        new = (old / s).to(norm.weight.dtype)
        # What the stored (rounded) norm really divides by, so the product stays exact.
        factors[lin] = torch.where(new.float() != 0, old / new.float(), torch.ones_like(s))
        norm.weight.copy_(new)
    return factors
