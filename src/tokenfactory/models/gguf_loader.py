"""GGUF file -> ModelConfig and a float32 state dict under Hugging Face names.

Shapes: GGUF lists dimensions fastest-first (ggml's ne[0] is the row length), the reverse of
numpy. `gguf` already hands back arrays in numpy order, so a dequantized `attn_q.weight` is
(out_features, in_features), exactly HF's nn.Linear layout; only the row order of Q and K
differs for the `llama` architecture (see gguf_names.unpermute_rows).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gguf
import numpy as np
import torch

from tokenfactory.kernels.q4_linear import Q4Weight
from tokenfactory.kernels.q8_linear import Q8Weight
from tokenfactory.models.config import ModelConfig, RopeScaling
from tokenfactory.models.errors import (
    CorruptModelError,
    UnsupportedArchitectureError,
    UnsupportedQuantizationError,
)
from tokenfactory.models.gguf_file import GGUFFile, GGUFTensor
from tokenfactory.models.gguf_names import ROPE_FREQS, hf_name, unpermute_rows
from tokenfactory.models.gguf_rope import match_llama3_scaling
from tokenfactory.models.weight_names import check_state_dict

# GGUF `general.architecture` values we can run. Mistral GGUFs say "llama".
SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3")

Q = gguf.GGMLQuantizationType
SUPPORTED_QUANT_TYPES = frozenset(
    {
        Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1,
        Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K,
    }
)  # fmt: skip

_MISSING = object()


def check_architecture(f: GGUFFile) -> str:
    arch = f.architecture
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"{f.path}: architecture {arch or '(none)'!r} is not supported; "
            f"supported GGUF architectures: {', '.join(SUPPORTED_ARCHITECTURES)} "
            "(Mistral GGUFs use 'llama')"
        )
    return arch


def check_quantization(f: GGUFFile) -> None:
    """Fail before any work if a tensor we would load has a type we cannot dequantize."""
    for t in f.tensors:
        if (hf_name(t.name) or t.name == ROPE_FREQS) and t.tensor_type not in SUPPORTED_QUANT_TYPES:
            supported = ", ".join(sorted(q.name for q in SUPPORTED_QUANT_TYPES))
            raise UnsupportedQuantizationError(
                f"{f.path}: tensor {t.name!r} is stored as {t.tensor_type.name}, which this engine "
                f"cannot dequantize; supported types: {supported}"
            )


def dequantized_nbytes(f: GGUFFile, dtype: torch.dtype = torch.float32) -> int:
    """Bytes the state dict will occupy, plus the float32 scratch of the largest tensor."""
    sizes = [t.n_elements for t in f.tensors if hf_name(t.name)]
    return sum(sizes) * dtype.itemsize + 4 * max(sizes, default=0)


def gguf_model_config(f: GGUFFile) -> ModelConfig:
    """Read the model's shape from GGUF metadata (keys are prefixed by the architecture)."""
    arch = check_architecture(f)
    meta = f.metadata

    def get(key: str, default: Any = _MISSING) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        if value is _MISSING:
            raise CorruptModelError(f"{f.path}: GGUF metadata lacks {arch}.{key}")
        return value

    names = f.tensor_names()
    try:
        hidden = int(get("embedding_length"))
        heads = int(get("attention.head_count"))
        name = str(meta.get("general.name", f.path.stem))
        # llama.cpp files Mistral under "llama"; transformers tells them apart by name too.
        architecture = "mistral" if arch == "llama" and "mistral" in name.lower() else arch
        eos = meta.get("tokenizer.ggml.eos_token_id")
        config = ModelConfig(
            architecture=architecture,
            vocab_size=_vocab_size(f, get),
            hidden_size=hidden,
            intermediate_size=int(get("feed_forward_length")),
            num_hidden_layers=int(get("block_count")),
            num_attention_heads=heads,
            num_key_value_heads=int(get("attention.head_count_kv", heads)),
            head_dim=int(get("attention.key_length", hidden // heads)),
            rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=float(get("rope.freq_base", 10000.0)),
            rope_scaling=_rope_scaling(f, get),
            max_position_embeddings=int(get("context_length", 2048)),
            tie_word_embeddings="output.weight" not in names,
            attention_bias="blk.0.attn_q.bias" in names,
            qk_norm="blk.0.attn_q_norm.weight" in names,
            bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
            eos_token_ids=[int(eos)] if eos is not None else [],
            name=name,
        )
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise CorruptModelError(f"{f.path}: inconsistent GGUF metadata ({e})") from e
    if ROPE_FREQS in names and config.rope_scaling is None:
        _apply_rope_freqs(f, config)
    return config


def _vocab_size(f: GGUFFile, get: Callable[..., Any]) -> int:
    """The embedding's row count is what the weights need; metadata is the fallback."""
    embd = f.tensor("token_embd.weight")
    if embd is not None and len(embd.shape) == 2:
        return int(embd.shape[1])  # ggml order: (hidden, vocab)
    size = get("vocab_size", None)
    if size is None and "tokenizer.ggml.tokens" in f.metadata:
        size = len(f.metadata["tokenizer.ggml.tokens"])
    if size is None:
        raise CorruptModelError(f"{f.path}: no vocab size and no token_embd.weight")
    return int(size)


def _rope_scaling(f: GGUFFile, get: Callable[..., Any]) -> RopeScaling | None:
    kind = get("rope.scaling.type", None)
    if kind in (None, "none"):
        return None
    factor = float(get("rope.scaling.factor", 1.0))
    if kind == "linear":
        return RopeScaling(kind="linear", factor=factor)
    raise UnsupportedArchitectureError(
        f"{f.path}: RoPE scaling {kind!r} is not supported (supported: linear, llama3)"
    )


def _apply_rope_freqs(f: GGUFFile, config: ModelConfig) -> None:
    """Turn llama3's baked `rope_freqs` divisors back into a RopeScaling, or keep them raw."""
    tensor = f.tensor(ROPE_FREQS)
    assert tensor is not None
    freqs = _dequantize(f, tensor).reshape(-1).astype(np.float64)
    if np.allclose(freqs, 1.0):
        return
    assert config.head_dim is not None
    scaling = match_llama3_scaling(freqs, config.head_dim, config.rope_theta)
    if scaling is not None:
        config.rope_scaling = scaling
    else:
        # Not a known llama3 setting: keep the divisors so the forward pass can apply them
        # (theta_i = pos * inv_freq_i / rope_freqs[i], as llama.cpp does).
        config.extra["rope_freqs"] = freqs.tolist()


def _dequantize(f: GGUFFile, tensor: GGUFTensor) -> np.ndarray:
    try:
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        # Numpy order is ggml's shape reversed.
        return array.reshape(tuple(int(d) for d in reversed(tensor.shape)))
    except NotImplementedError as e:
        raise UnsupportedQuantizationError(
            f"{f.path}: tensor {tensor.name!r} has type {tensor.tensor_type.name}, "
            "which cannot be dequantized"
        ) from e
    except Exception as e:  # noqa: BLE001 - damaged data shows up as any numpy error
        raise CorruptModelError(
            f"{f.path} is corrupt or truncated: tensor {tensor.name!r} cannot be read ({e})"
        ) from e


def _unpermute(f: GGUFFile, name: str, array: np.ndarray, config: ModelConfig) -> np.ndarray:
    if name.endswith(("attn_q.weight", "attn_q.bias")):
        heads = config.num_attention_heads
    elif name.endswith(("attn_k.weight", "attn_k.bias")):
        heads = config.num_key_value_heads
    else:
        return array
    try:
        return unpermute_rows(array, heads)
    except ValueError as e:
        raise CorruptModelError(f"{f.path}: tensor {name!r} does not match the config: {e}") from e


# Weights the logits read (the lm_head, or the token embedding it is tied to).
_LOGIT_WEIGHTS = ("lm_head.weight", "model.embed_tokens.weight")


def load_gguf_q4_weights(f: GGUFFile, config: ModelConfig) -> dict[str, Q4Weight | Q8Weight]:
    """The 2-D weights stored as Q4_1, and the logits' weight where it is stored as Q8_0, under
    HF names, in the decode kernels' layouts (rows in the same order as the dequantized state
    dict's)."""
    permute = f.architecture == "llama"
    out: dict[str, Q4Weight | Q8Weight] = {}
    for tensor in f.tensors:
        name = hf_name(tensor.name)
        if name is None or len(tensor.shape) != 2:
            continue
        if tensor.tensor_type == Q.Q8_0 and name in _LOGIT_WEIGHTS:
            raw = np.asarray(tensor.data, dtype=np.uint8).reshape(int(tensor.shape[1]), -1)
            out[name] = Q8Weight.from_gguf_blocks(raw)
            continue
        if tensor.tensor_type != Q.Q4_1:
            continue
        raw = np.asarray(tensor.data, dtype=np.uint8).reshape(int(tensor.shape[1]), -1)
        if permute:
            raw = _unpermute(f, tensor.name, raw, config)
        out[name] = Q4Weight.from_gguf_blocks(raw)
    return out


def load_gguf_state_dict(
    f: GGUFFile, config: ModelConfig, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Dequantize every tensor the model consumes (to float32, then `dtype`), in HF layout."""
    check_quantization(f)
    permute = f.architecture == "llama"
    state: dict[str, torch.Tensor] = {}
    for tensor in f.tensors:
        name = hf_name(tensor.name)
        if name is None:
            continue
        array = _dequantize(f, tensor)
        if permute:
            array = _unpermute(f, tensor.name, array, config)
        # Copy: F32 tensors are views into the read-only memory map.
        weight = torch.from_numpy(np.array(array, dtype=np.float32, order="C", copy=True))
        state[name] = weight if dtype == torch.float32 else weight.to(dtype)
    return check_state_dict(state, config, str(f.path))
