"""Hugging Face directories -> (ModelConfig, state dict, tokenizer), checked against what was
written and against transformers reading the same directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.models.hf_fixtures import write_tiny_llama3_dir, write_tiny_qwen3_dir
from tokenfactory.models.config import RopeScaling
from tokenfactory.models.errors import (
    CorruptModelError,
    ModelNotFoundError,
    UnsupportedArchitectureError,
)
from tokenfactory.models.loader import load_model_files


def _written(directory: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in directory.glob("*.safetensors"):
        state.update(load_file(str(f)))
    return state


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama3_dir(tmp_path_factory.mktemp("llama3"))


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_qwen3_dir(tmp_path_factory.mktemp("qwen3"), shards=3)


def test_llama3_dir_round_trip(llama3_dir: Path) -> None:
    loaded = load_model_files(llama3_dir)
    c = loaded.config
    assert loaded.format == "hf" and loaded.source == llama3_dir
    assert (c.architecture, c.vocab_size, c.hidden_size, c.intermediate_size) == (
        "llama",
        49152,
        64,
        128,
    )
    assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (
        2,
        4,
        2,
        16,
    )
    assert c.rope_theta == 500000.0
    assert c.rope_scaling == RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)
    assert not c.tie_word_embeddings and not c.qk_norm and not c.attention_bias
    assert c.bos_token_id == 1 and c.eos_token_ids == [2, 0]
    written = _written(llama3_dir)
    assert set(loaded.state_dict) == set(written)
    for name, tensor in written.items():
        assert torch.equal(loaded.state_dict[name], tensor), name


def test_qwen3_sharded_dir_round_trip(qwen3_dir: Path) -> None:
    assert len(list(qwen3_dir.glob("model-*-of-00003.safetensors"))) == 3
    loaded = load_model_files(qwen3_dir)
    c = loaded.config
    assert c.architecture == "qwen3" and c.qk_norm and c.tie_word_embeddings
    assert c.head_dim == 32 and c.rope_scaling is None and c.rope_theta == 1e6
    assert "lm_head.weight" not in loaded.state_dict
    assert loaded.state_dict["model.layers.1.self_attn.q_norm.weight"].shape == (32,)
    written = _written(qwen3_dir)
    assert set(loaded.state_dict) == set(written)
    for name, tensor in written.items():
        assert torch.equal(loaded.state_dict[name], tensor), name


def test_stored_dtype_is_kept_unless_cast(tmp_path: Path) -> None:
    directory = write_tiny_qwen3_dir(tmp_path, dtype=torch.bfloat16)
    assert all(t.dtype == torch.bfloat16 for t in load_model_files(directory).state_dict.values())
    cast = load_model_files(directory, dtype=torch.float32)
    assert all(t.dtype == torch.float32 for t in cast.state_dict.values())


def test_extra_tensors_are_dropped(tmp_path: Path) -> None:
    """Old checkpoints carry rotary inv_freq buffers; tied ones may carry lm_head."""
    from safetensors.torch import save_file

    directory = write_tiny_qwen3_dir(tmp_path)
    state = load_file(str(directory / "model.safetensors"))
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(16)
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    save_file(state, str(directory / "model.safetensors"))
    loaded = load_model_files(directory)
    assert "lm_head.weight" not in loaded.state_dict
    assert not any("inv_freq" in n for n in loaded.state_dict)


def test_hf_tokenizer_files(llama3_dir: Path, qwen3_dir: Path) -> None:
    llama = load_model_files(llama3_dir).tokenizer
    assert llama.bos_token_id == 1
    assert llama.eos_token_ids[:2] == [2, 0]
    assert llama.pad_token_id == 0
    msgs = [{"role": "user", "content": " hi "}]
    assert llama.apply_chat_template(msgs) == (
        "<|im_start|><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    qwen = load_model_files(qwen3_dir).tokenizer
    assert qwen.bos_token_id is None  # tokenizer_config has none (config.json's is unused)
    assert "bos_token" not in qwen.special_tokens
    assert qwen.eos_token_ids[:2] == [2, 0]
    assert qwen.encode("<|im_start|>x<|im_end|>") == [1, 104, 2]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["llama3", "qwen3"])
def test_matches_transformers(kind: str, llama3_dir: Path, qwen3_dir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    directory = llama3_dir if kind == "llama3" else qwen3_dir
    ours = load_model_files(directory)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    theirs = {k: v for k, v in model.state_dict().items() if not k.endswith("inv_freq")}
    if ours.config.tie_word_embeddings:
        assert (
            theirs.pop("lm_head.weight").data_ptr()
            == theirs["model.embed_tokens.weight"].data_ptr()
        )
    assert set(theirs) == set(ours.state_dict)
    for name, tensor in theirs.items():
        assert torch.equal(ours.state_dict[name], tensor), name

    hf_tok = transformers.AutoTokenizer.from_pretrained(directory)
    text = "<|im_start|>user\nHello 東京 😀 123<|im_end|>"
    assert ours.tokenizer.encode(text) == hf_tok.encode(text, add_special_tokens=False)
    assert ours.tokenizer.encode(text, add_special_tokens=True) == hf_tok.encode(text)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Weather?"},
    ]
    tools = [{"type": "function", "function": {"name": "w", "description": "<weather> & 'co'"}}]
    for kwargs in ({}, {"tools": tools}, {"enable_thinking": False}):
        expected = hf_tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **kwargs
        )
        assert ours.tokenizer.apply_chat_template(messages, **kwargs) == expected


# -- errors -----------------------------------------------------------------------------------


def test_unsupported_hf_architecture(tmp_path: Path) -> None:
    directory = write_tiny_llama3_dir(tmp_path)
    config = json.loads((directory / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitectureError, match="GPT2LMHeadModel.*LlamaForCausalLM"):
        load_model_files(directory)


def test_dir_without_config(tmp_path: Path) -> None:
    with pytest.raises(CorruptModelError, match="config.json"):
        load_model_files(tmp_path)


def test_dir_without_weights(tmp_path: Path) -> None:
    directory = write_tiny_llama3_dir(tmp_path)
    (directory / "model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="safetensors"):
        load_model_files(directory)


def test_truncated_safetensors(tmp_path: Path) -> None:
    directory = write_tiny_llama3_dir(tmp_path)
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(CorruptModelError, match="corrupt or truncated"):
        load_model_files(directory)


def test_bad_config_json(tmp_path: Path) -> None:
    directory = write_tiny_llama3_dir(tmp_path)
    (directory / "config.json").write_text("{not json")
    with pytest.raises(CorruptModelError, match="config.json"):
        load_model_files(directory)
