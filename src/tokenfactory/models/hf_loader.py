"""Hugging Face model directory -> ModelConfig and a state dict.

Reads config.json and *.safetensors (one file or shards listed by
model.safetensors.index.json). Weights keep the dtype they are stored in (bf16 stays bf16,
so an 8B model needs 16 GB, not 32) unless the caller asks for a `dtype`; the model casts
as it needs.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from tokenfactory.models.config import ModelConfig, RopeScaling
from tokenfactory.models.errors import (
    CorruptModelError,
    ModelNotFoundError,
    UnsupportedArchitectureError,
)
from tokenfactory.models.hf_tokenizer import read_json
from tokenfactory.models.weight_names import check_state_dict, expected_weight_shapes

# config.json `architectures[0]` -> our architecture name.
HF_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}

_SAFETENSORS_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip


def hf_architecture(config: dict[str, Any], source: Path) -> str:
    names = config.get("architectures") or []
    for name in names:
        if name in HF_ARCHITECTURES:
            return HF_ARCHITECTURES[name]
    model_type = config.get("model_type")
    if not names and model_type in HF_ARCHITECTURES.values():
        return str(model_type)
    shown = ", ".join(names) or f"model_type {model_type!r}"
    raise UnsupportedArchitectureError(
        f"{source}: architecture {shown} is not supported; supported: "
        + ", ".join(HF_ARCHITECTURES)
    )


def hf_model_config(directory: Path) -> ModelConfig:
    """ModelConfig from a directory's config.json."""
    path = directory / "config.json"
    if not path.is_file():
        raise CorruptModelError(f"{directory} has no config.json")
    raw = read_json(path)
    architecture = hf_architecture(raw, path)
    try:
        heads = int(raw["num_attention_heads"])
        hidden = int(raw["hidden_size"])
        theta, scaling = _rope(raw, path)
        eos = raw.get("eos_token_id")
        return ModelConfig(
            architecture=architecture,
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(raw["intermediate_size"]),
            num_hidden_layers=int(raw["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or hidden // heads),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            # Qwen2 always has q/k/v biases; its config.json does not say so.
            attention_bias=architecture == "qwen2" or bool(raw.get("attention_bias", False)),
            qk_norm=architecture == "qwen3",
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=[eos] if isinstance(eos, int) else list(eos or []),
            name=str(raw.get("_name_or_path") or directory.name),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptModelError(f"{path} is corrupt: missing or bad field ({e})") from e


def _rope(raw: dict[str, Any], source: Path) -> tuple[float, RopeScaling | None]:
    """(theta, scaling) from `rope_theta`/`rope_scaling` or transformers 5's `rope_parameters`."""
    params = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind in (None, "default"):
        return theta, None
    factor = float(params.get("factor", 1.0))
    if kind == "linear":
        return theta, RopeScaling(kind="linear", factor=factor)
    if kind == "llama3":
        return theta, RopeScaling(
            kind="llama3",
            factor=factor,
            low_freq_factor=float(params.get("low_freq_factor", 1.0)),
            high_freq_factor=float(params.get("high_freq_factor", 4.0)),
            original_max_position_embeddings=int(
                params.get("original_max_position_embeddings", 8192)
            ),
        )
    raise UnsupportedArchitectureError(
        f"{source}: RoPE scaling {kind!r} is not supported (supported: linear, llama3)"
    )


def hf_weight_files(directory: Path) -> list[Path]:
    """The safetensors files holding the weights: from the shard index, else every file."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map") or {}
        files = [directory / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CorruptModelError(
                f"{directory}: shards listed in {index.name} are missing: " + ", ".join(missing)
            )
        return files
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ModelNotFoundError(
            f"{directory} has no *.safetensors weights (other weight formats are not supported)"
        )
    return files


def _safetensors_header(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
        return header
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as e:
        raise CorruptModelError(
            f"{path} is corrupt or truncated: bad safetensors header ({e})"
        ) from e


def hf_weights_nbytes(files: list[Path], config: ModelConfig, dtype: torch.dtype | None) -> int:
    """Bytes the state dict will occupy, from the safetensors headers alone."""
    wanted = expected_weight_shapes(config)
    total = 0
    for path in files:
        for name, info in _safetensors_header(path).items():
            if name not in wanted:
                continue
            n = 1
            for d in info["shape"]:
                n *= int(d)
            size = (
                dtype.itemsize
                if dtype is not None
                else _SAFETENSORS_DTYPE_BYTES.get(info["dtype"], 4)
            )
            total += n * size
    return total


def load_hf_state_dict(
    directory: Path, config: ModelConfig, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Read the tensors the model consumes, in their stored dtype unless `dtype` is given."""
    wanted = expected_weight_shapes(config)
    state: dict[str, torch.Tensor] = {}
    for path in hf_weight_files(directory):
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                    if name not in wanted:
                        continue  # e.g. rotary inv_freq buffers, or lm_head when tied
                    tensor = f.get_tensor(name)
                    state[name] = tensor.to(dtype) if dtype is not None else tensor
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise CorruptModelError(f"{path} is corrupt or truncated: {e}") from e
    return check_state_dict(state, config, str(directory))
