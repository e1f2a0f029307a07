"""Setting up what an engine runs: the network on its device and dtype, and the size of its
KV cache from the memory there."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from tokenfactory.engine.attention import KVCache
from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.hardware import (
    available_memory_bytes,
    configure_threads,
    resolve_device,
    resolve_dtype,
)
from tokenfactory.models.config import ModelConfig
from tokenfactory.models.errors import ModelTooLargeError
from tokenfactory.models.llama import LlamaForCausalLM

if TYPE_CHECKING:
    from tokenfactory.models.tokenizer import Tokenizer


def build_model(
    model_config: ModelConfig,
    config: EngineConfig,
    state_dict: dict[str, torch.Tensor] | None,
    calibration_ids: Sequence[int] | None = None,
) -> LlamaForCausalLM:
    """Instantiate the network on the configured device and dtype, with real or random weights.
    `calibration_ids`: the shipped calibration text in the model's tokens, which FP8 weights
    smooth their activations with (`fp8_calibration_ids`); None quantizes without smoothing."""
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    if device.type == "cpu":
        configure_threads(config.num_threads)
    need = model_config.num_parameters() * torch.empty(0, dtype=dtype).element_size()
    free = available_memory_bytes(device)
    if free is not None and need > free:
        raise ModelTooLargeError(
            f"{model_config.name or model_config.architecture} needs {need / 2**30:.1f} GiB for "
            f"its weights in {dtype} but only {free / 2**30:.1f} GiB is free on {device}"
        )
    max_positions = config.max_model_len or model_config.max_position_embeddings
    with torch.device("meta"):
        model = LlamaForCausalLM(model_config, max_positions=max_positions)
    model = model.to(dtype=dtype).to_empty(device=device)
    # Non-persistent rotary tables were lost on the meta device; rebuild them for real.
    model.rotary = type(model.rotary)(model_config, max_positions).to(device)
    if state_dict is None:
        model.init_random_weights(seed=config.seed)
    else:
        model.load_hf_state_dict(state_dict)
    if config.quantization == "fp8":
        model.quantize_fp8(calibration_ids)
    return model.eval()


def kv_cache_blocks(model: LlamaForCausalLM, config: EngineConfig) -> int:
    """How many KV blocks to allocate: an explicit count wins, then a byte budget, then a
    share of the memory free on the model's device."""
    cfg = config
    per_block = KVCache.bytes_per_block(model.config, cfg.block_size, model.dtype)
    if cfg.num_kv_blocks is not None:
        return cfg.num_kv_blocks
    if cfg.kv_cache_bytes is not None:
        budget = cfg.kv_cache_bytes
    elif model.device.type == "cuda":
        budget = _cuda_kv_budget(model, cfg)
    else:
        free = available_memory_bytes(model.device)
        budget = int((free or 4 << 30) * cfg.kv_cache_memory_fraction)
    # No point in more blocks than every sequence slot at full context could use.
    max_len = cfg.max_model_len or model.rotary.max_positions
    useful = cfg.max_num_seqs * -(-max_len // cfg.block_size)
    blocks = min(budget // per_block, useful)
    if blocks < 2:
        raise ModelTooLargeError(
            f"the KV cache budget ({budget / 2**20:.1f} MiB) holds fewer than 2 blocks of "
            f"{per_block / 2**20:.2f} MiB: give more memory (--kv-cache-gb) or a smaller model"
        )
    return int(blocks)


def _cuda_kv_budget(model: LlamaForCausalLM, config: EngineConfig) -> int:
    """The KV cache's share of free GPU memory (the weights are already loaded), less a
    reserve for activations, the sampler's float32 logits and the CUDA graph pool."""
    cfg, mc = config, model.config
    free = available_memory_bytes(model.device) or 0
    rows = max(cfg.max_num_seqs, 1)
    reserve = (
        (1 << 30)
        + 3 * rows * mc.vocab_size * 4  # logits: the graphs' buffer, float copy, workspace
        + cfg.max_num_batched_tokens * mc.intermediate_size * 2 * 3  # prefill MLP
    )
    return max(0, int(free * cfg.gpu_memory_utilization) - reserve)


def fp8_calibration_ids(config: EngineConfig, tokenizer: Tokenizer | None) -> list[int] | None:
    """The calibration text in `tokenizer`'s tokens when `config` asks for FP8 weights; None
    otherwise, or without a tokenizer (random weights: nothing real to calibrate)."""
    if config.quantization != "fp8" or tokenizer is None:
        return None
    from tokenfactory.models.fp8_smoothing import calibration_text

    return tokenizer.encode(calibration_text())
