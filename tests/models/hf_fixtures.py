"""Tiny random Hugging Face model directories that transformers can load too.

`write_tiny_llama3_dir(path)` and `write_tiny_qwen3_dir(path)` write config.json,
generation_config.json, model.safetensors (or shards), tokenizer.json and
tokenizer_config.json into `path` and return it. The tokenizer is SmolLM2's (from the embedded
GGUF, rebuilt by our Tokenizer), so vocab_size is 49152; the networks are 2 layers of width 64.
Weights are float32 unless `dtype` says otherwise; `shards` > 1 writes an index and shards.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from tokenfactory.models.embedded import embedded_model_path
from tokenfactory.models.gguf_file import open_gguf
from tokenfactory.models.hf_loader import hf_model_config
from tokenfactory.models.tokenizer import Tokenizer
from tokenfactory.models.weight_names import expected_weight_shapes

VOCAB_SIZE = 49152

LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] | trim + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Qwen-style: tools rendered with tojson, a system message, raise_exception on bad roles.
QWEN3_CHAT_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n"
    "{% if messages[0].role == 'system' %}{{ messages[0].content }}\n\n{% endif %}"
    "# Tools\n<tools>{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools><|im_end|>\n"
    "{% elif messages[0].role == 'system' %}"
    "<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n{% endif %}"
    "{% for message in messages %}"
    "{% if message.role not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('bad role: ' + message.role) }}{% endif %}"
    "{% if message.role != 'system' %}"
    "<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


@lru_cache(maxsize=1)
def smollm2_tokenizer_json() -> str:
    meta = open_gguf(embedded_model_path()).metadata
    return Tokenizer.from_gguf_metadata(meta).backend.to_str()


def _random_weights(directory: Path, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    config = hf_model_config(directory)
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in expected_weight_shapes(config).items():
        if len(shape) == 1 and not name.endswith("bias"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        else:
            t = 0.05 * torch.randn(shape, generator=gen)
        state[name] = t.to(dtype).contiguous()
    return state


def _write_weights(directory: Path, state: dict[str, torch.Tensor], shards: int) -> None:
    if shards <= 1:
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
        return
    names = sorted(state)
    weight_map = {}
    for i in range(shards):
        part = names[i::shards]
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: state[n] for n in part}, str(directory / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _write_dir(
    path: Path,
    config: dict[str, Any],
    tokenizer_config: dict[str, Any],
    generation_config: dict[str, Any],
    seed: int,
    shards: int,
    dtype: torch.dtype,
) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / "generation_config.json").write_text(json.dumps(generation_config, indent=2))
    (path / "tokenizer.json").write_text(smollm2_tokenizer_json())
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    _write_weights(path, _random_weights(path, seed, dtype), shards)
    return path


def write_tiny_llama3_dir(
    path: Path, *, seed: int = 0, shards: int = 1, dtype: torch.dtype = torch.float32
) -> Path:
    """Llama-3-style: GQA, llama3 RoPE scaling, untied lm_head."""
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "max_position_embeddings": 131072,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "chat_template": LLAMA3_CHAT_TEMPLATE,
        "model_max_length": 131072,
    }
    generation = {"bos_token_id": 1, "eos_token_id": [2, 0]}
    return _write_dir(path, config, tokenizer_config, generation, seed, shards, dtype)


def write_tiny_qwen3_dir(
    path: Path, *, seed: int = 0, shards: int = 1, dtype: torch.dtype = torch.float32
) -> Path:
    """Qwen3-style: q/k RMSNorm, head_dim != hidden/heads, tied embeddings."""
    config = {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "max_position_embeddings": 40960,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": 2,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": {"__type": "AddedToken", "content": "<|im_end|>", "special": True},
        "pad_token": "<|endoftext|>",
        "chat_template": QWEN3_CHAT_TEMPLATE,
        "model_max_length": 40960,
    }
    generation = {"eos_token_id": [2, 0], "pad_token_id": 0}
    return _write_dir(path, config, tokenizer_config, generation, seed, shards, dtype)
