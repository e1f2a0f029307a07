"""The Hugging Face tensor names and shapes a ModelConfig implies, and a check against them.

Both loaders produce state dicts under these names, whatever the file called them.
"""

from __future__ import annotations

import torch

from tokenfactory.models.config import ModelConfig
from tokenfactory.models.errors import CorruptModelError


def expected_weight_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the model consumes, by HF name, with its HF (out, in) shape."""
    assert config.head_dim is not None
    h, hd, inter = config.hidden_size, config.head_dim, config.intermediate_size
    q_out = config.num_attention_heads * hd
    kv_out = config.num_key_value_heads * hd
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (config.vocab_size, h),
        "model.norm.weight": (h,),
    }
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, h)
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
        shapes[p + "self_attn.q_proj.weight"] = (q_out, h)
        shapes[p + "self_attn.k_proj.weight"] = (kv_out, h)
        shapes[p + "self_attn.v_proj.weight"] = (kv_out, h)
        shapes[p + "self_attn.o_proj.weight"] = (h, q_out)
        if config.attention_bias:
            shapes[p + "self_attn.q_proj.bias"] = (q_out,)
            shapes[p + "self_attn.k_proj.bias"] = (kv_out,)
            shapes[p + "self_attn.v_proj.bias"] = (kv_out,)
        if config.qk_norm:
            shapes[p + "self_attn.q_norm.weight"] = (hd,)
            shapes[p + "self_attn.k_norm.weight"] = (hd,)
        shapes[p + "mlp.gate_proj.weight"] = (inter, h)
        shapes[p + "mlp.up_proj.weight"] = (inter, h)
        shapes[p + "mlp.down_proj.weight"] = (h, inter)
    return shapes


def check_state_dict(
    state_dict: dict[str, torch.Tensor], config: ModelConfig, source: str
) -> dict[str, torch.Tensor]:
    """Keep only the tensors the model consumes; raise if one is missing or misshapen."""
    expected = expected_weight_shapes(config)
    missing = [name for name in expected if name not in state_dict]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise CorruptModelError(f"{source} lacks tensors the model needs: {shown}")
    for name, shape in expected.items():
        got = tuple(state_dict[name].shape)
        if got != shape:
            raise CorruptModelError(
                f"{source}: tensor {name} has shape {got}, but the config implies {shape}"
            )
    return {name: state_dict[name] for name in expected}
