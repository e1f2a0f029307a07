"""Writing tiny GGUF files with gguf.GGUFWriter, the way convert_hf_to_gguf lays them out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

from tokenfactory.models.config import ModelConfig
from tokenfactory.models.gguf_names import permute_rows
from tokenfactory.models.weight_names import expected_weight_shapes

_TO_GGUF_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_TO_GGUF_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def gguf_name(hf: str) -> str:
    if hf in _TO_GGUF_GLOBAL:
        return _TO_GGUF_GLOBAL[hf]
    _, _, layer, rest = hf.split(".", 3)
    return f"blk.{layer}.{_TO_GGUF_LAYER[rest]}"


def byte_alphabet() -> list[str]:
    """GPT-2's printable spelling of the 256 byte values."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def tiny_config(architecture: str = "llama", **overrides: object) -> ModelConfig:
    base: dict[str, object] = dict(
        architecture=architecture,
        vocab_size=len(SPECIAL_TOKENS) + 256,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        attention_bias=architecture == "qwen2",
        qk_norm=architecture == "qwen3",
    )
    base.update(overrides)
    return ModelConfig(**base)  # type: ignore[arg-type]


def random_state(config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random HF-layout weights; 1-D tensors near 1 like trained norms."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in expected_weight_shapes(config).items():
        if len(shape) == 1 and not name.endswith("bias"):
            state[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            state[name] = (0.05 * rng.standard_normal(shape)).astype(np.float32)
    return state


def write_tiny_gguf(
    path: Path,
    config: ModelConfig,
    state: dict[str, np.ndarray],
    *,
    arch: str | None = None,
    quant: dict[str, GGMLQuantizationType] | None = None,
    raw_tensors: dict[str, tuple[np.ndarray, GGMLQuantizationType]] | None = None,
    extra_float_tensors: dict[str, np.ndarray] | None = None,
    name: str = "tiny",
) -> Path:
    """A GGUF like convert_hf_to_gguf writes: Q/K rows permuted for `llama`, gpt2 tokenizer.

    `quant` quantizes chosen GGUF tensors with gguf.quants; `raw_tensors` adds pre-encoded
    bytes under a GGUF name (for types gguf cannot quantize to).
    """
    arch = arch or ("llama" if config.architecture in ("llama", "mistral") else config.architecture)
    w = GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_uint32(f"{arch}.context_length", config.max_position_embeddings)
    w.add_uint32(f"{arch}.embedding_length", config.hidden_size)
    w.add_uint32(f"{arch}.block_count", config.num_hidden_layers)
    w.add_uint32(f"{arch}.feed_forward_length", config.intermediate_size)
    w.add_uint32(f"{arch}.attention.head_count", config.num_attention_heads)
    w.add_uint32(f"{arch}.attention.head_count_kv", config.num_key_value_heads)
    w.add_uint32(f"{arch}.attention.key_length", int(config.head_dim or 0))
    w.add_uint32(f"{arch}.attention.value_length", int(config.head_dim or 0))
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", config.rms_norm_eps)
    w.add_float32(f"{arch}.rope.freq_base", config.rope_theta)
    w.add_uint32(f"{arch}.vocab_size", config.vocab_size)
    tokens = SPECIAL_TOKENS + byte_alphabet()
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", "default")
    w.add_array("tokenizer.ggml.tokens", tokens)
    w.add_array("tokenizer.ggml.token_type", [3] * len(SPECIAL_TOKENS) + [1] * 256)
    w.add_array("tokenizer.ggml.merges", [])
    w.add_uint32("tokenizer.ggml.bos_token_id", 1)
    w.add_uint32("tokenizer.ggml.eos_token_id", 2)
    quant = quant or {}
    for hf, array in state.items():
        gname = gguf_name(hf)
        if arch == "llama" and gname.endswith(("attn_q.weight", "attn_q.bias")):
            array = permute_rows(array, config.num_attention_heads)
        elif arch == "llama" and gname.endswith(("attn_k.weight", "attn_k.bias")):
            array = permute_rows(array, config.num_key_value_heads)
        qtype = quant.get(gname)
        if qtype is None:
            w.add_tensor(gname, np.ascontiguousarray(array, dtype=np.float32))
        elif qtype == GGMLQuantizationType.F16:
            w.add_tensor(gname, array.astype(np.float16))
        else:
            w.add_tensor(gname, quantize(array, qtype), raw_dtype=qtype)
    for gname, (raw, qtype) in (raw_tensors or {}).items():
        w.add_tensor(gname, raw, raw_dtype=qtype)
    for gname, array in (extra_float_tensors or {}).items():
        w.add_tensor(gname, np.ascontiguousarray(array, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
