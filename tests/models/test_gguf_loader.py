"""GGUF -> (ModelConfig, state dict): names, Q/K un-permutation, dequantization, errors."""

from __future__ import annotations

import functools
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from tests.models.gguf_fixtures import random_state, tiny_config, write_tiny_gguf
from tokenfactory.models.errors import (
    CorruptModelError,
    ModelNotFoundError,
    UnsupportedArchitectureError,
    UnsupportedQuantizationError,
)
from tokenfactory.models.gguf_file import open_gguf
from tokenfactory.models.gguf_loader import gguf_model_config, load_gguf_state_dict
from tokenfactory.models.gguf_rope import llama3_freq_divisors
from tokenfactory.models.loader import LoadedModel, load_model_files

Q = GGMLQuantizationType


def _load(path: Path) -> tuple:
    f = open_gguf(path)
    config = gguf_model_config(f)
    return config, load_gguf_state_dict(f, config)


# -- the embedded model against transformers ------------------------------------------------


@pytest.mark.slow
def test_embedded_config(embedded_model: LoadedModel) -> None:
    c = embedded_model.config
    assert (c.architecture, c.vocab_size, c.hidden_size, c.intermediate_size) == (
        "llama",
        49152,
        576,
        1536,
    )
    assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (
        30,
        9,
        3,
        64,
    )
    assert c.rope_theta == 100000.0 and c.rope_scaling is None
    assert c.tie_word_embeddings and not c.attention_bias and not c.qk_norm
    assert c.max_position_embeddings == 8192
    assert c.rms_norm_eps == pytest.approx(1e-5)
    assert c.bos_token_id == 1 and c.eos_token_ids == [2, 0]
    assert embedded_model.format == "gguf"
    assert "lm_head.weight" not in embedded_model.state_dict
    assert all(t.dtype == torch.float32 for t in embedded_model.state_dict.values())


@pytest.mark.slow
def test_embedded_state_dict_matches_transformers(
    embedded_model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """transformers dequantizes with the same gguf code and un-permutes Q/K for llama."""
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    # transformers rebuilds the same name map once per submodule (~8 s here): memoize it.
    monkeypatch.setattr(gguf, "get_tensor_name_map", functools.cache(gguf.get_tensor_name_map))

    c = embedded_model.config
    hf_config = transformers.LlamaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        tie_word_embeddings=True,
    )
    with torch.device("meta"):  # only used for its parameter names
        skeleton = transformers.LlamaForCausalLM(hf_config)
    parsed = load_gguf_checkpoint(
        str(embedded_model.source), return_tensors=True, model_to_load=skeleton
    )
    theirs = {k: torch.as_tensor(v) for k, v in parsed["tensors"].items()}
    assert set(theirs) == set(embedded_model.state_dict)
    for name, tensor in embedded_model.state_dict.items():
        assert torch.equal(tensor, theirs[name].float()), name


def test_header_parser_agrees_with_gguf_reader(tmp_path: Path) -> None:
    """Our struct-based header parse reads what gguf.GGUFReader reads, for every value type."""
    config = tiny_config("llama")
    quant = {
        "blk.0.attn_q.weight": Q.Q8_0,
        "blk.0.ffn_up.weight": Q.Q4_1,
        "blk.1.attn_v.weight": Q.F16,
    }
    path = write_tiny_gguf(tmp_path / "m.gguf", config, random_state(config), quant=quant)
    extra = tmp_path / "values.gguf"
    w = gguf.GGUFWriter(str(extra), "llama")
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -5)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_int32("t.i32", -(2**31))
    w.add_uint64("t.u64", 2**63 + 5)
    w.add_int64("t.i64", -(2**62))
    w.add_float64("t.f64", 1.25e-300)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo 東京")
    w.add_array("t.floats", [0.5, -1.5])
    w.add_array("t.strs", ["a", "", "😀"])
    w.add_tensor("x", np.arange(6, dtype=np.float32).reshape(2, 3))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    for file in (path, extra):
        ours = open_gguf(file)
        reader = GGUFReader(file)
        for key, field in reader.fields.items():
            if not key.startswith("GGUF."):
                assert ours.metadata[key] == field.contents(), key
        assert [t.name for t in reader.tensors] == [t.name for t in ours.tensors]
        for theirs, mine in zip(reader.tensors, ours.tensors, strict=True):
            assert tuple(int(d) for d in theirs.shape) == mine.shape
            assert theirs.tensor_type == mine.tensor_type
            assert np.array_equal(np.asarray(theirs.data).view(np.uint8), mine.data.view(np.uint8))


# -- tiny files written like convert_hf_to_gguf ---------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_float_round_trip(tmp_path: Path, arch: str) -> None:
    """HF weights -> GGUF (permuted for llama) -> our loader gives the HF weights back."""
    config = tiny_config(arch, tie_word_embeddings=arch == "qwen3")
    state = random_state(config)
    path = write_tiny_gguf(tmp_path / "m.gguf", config, state)
    loaded_config, loaded = _load(path)
    assert loaded_config.architecture == arch
    assert loaded_config.attention_bias == (arch == "qwen2")
    assert loaded_config.qk_norm == (arch == "qwen3")
    assert loaded_config.tie_word_embeddings == (arch == "qwen3")
    assert loaded_config.head_dim == 16
    assert set(loaded) == set(state)
    for name, array in state.items():
        assert torch.equal(loaded[name], torch.from_numpy(array)), name


def test_permutation_is_undone_only_for_llama(tmp_path: Path) -> None:
    config = tiny_config("llama")
    state = random_state(config)
    path = write_tiny_gguf(tmp_path / "m.gguf", config, state)
    raw = open_gguf(path).tensor("blk.0.attn_q.weight")
    assert raw is not None
    stored = dequantize(raw.data, raw.tensor_type)
    q = state["model.layers.0.self_attn.q_proj.weight"]
    assert not np.array_equal(stored, q)  # the file really is permuted
    assert np.array_equal(np.sort(stored, axis=0), np.sort(q, axis=0))  # rows reordered only


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1])
def test_quantized_round_trip(tmp_path: Path, qtype: GGMLQuantizationType) -> None:
    config = tiny_config("llama")
    state = random_state(config)
    quant = {"blk.0.attn_q.weight": qtype, "blk.1.ffn_down.weight": qtype}
    path = write_tiny_gguf(tmp_path / "m.gguf", config, state, quant=quant)
    _, loaded = _load(path)
    tol = {Q.F16: 1e-3, Q.BF16: 1e-2, Q.Q8_0: 1e-2}.get(qtype, 0.1)
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"):
        expected = torch.from_numpy(state[name])
        assert loaded[name].shape == expected.shape and loaded[name].dtype == torch.float32
        err = (loaded[name] - expected).abs().max() / expected.abs().max()
        assert err < tol, (name, float(err))


@pytest.mark.parametrize("qtype", [Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K])
def test_k_quants_dequantize_in_hf_shape(tmp_path: Path, qtype: GGMLQuantizationType) -> None:
    """gguf cannot quantize to K types, so write random blocks and check shape and values."""
    config = tiny_config("qwen3", hidden_size=256, intermediate_size=256)
    state = random_state(config)
    del state["model.layers.0.mlp.up_proj.weight"]
    block, size = GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(0)
    # Bytes in 0x20..0x3F: any pair read as an f16 scale is finite (exponent never all ones).
    raw = rng.integers(0, 256, size=(256, 256 // block * size), dtype=np.uint8) & 0x3F | 0x20
    path = write_tiny_gguf(
        tmp_path / "m.gguf", config, state, raw_tensors={"blk.0.ffn_up.weight": (raw, qtype)}
    )
    _, loaded = _load(path)
    up = loaded["model.layers.0.mlp.up_proj.weight"]
    assert up.shape == (256, 256)
    assert torch.equal(up, torch.from_numpy(dequantize(raw, qtype).astype(np.float32)))


def test_llama3_rope_freqs_become_scaling(tmp_path: Path) -> None:
    from tokenfactory.models.config import RopeScaling

    config = tiny_config("llama", rope_theta=500000.0)
    scaling = RopeScaling(kind="llama3", factor=32.0, original_max_position_embeddings=8192)
    freqs = llama3_freq_divisors(16, 500000.0, scaling).astype(np.float32)
    assert not np.allclose(freqs, 1.0)
    path = write_tiny_gguf(
        tmp_path / "m.gguf",
        config,
        random_state(config),
        extra_float_tensors={"rope_freqs.weight": freqs},
    )
    loaded_config, loaded = _load(path)
    assert loaded_config.rope_scaling == scaling
    assert "rope_freqs" not in loaded_config.extra
    assert all("rope" not in name for name in loaded)


def test_unknown_rope_freqs_are_kept_raw(tmp_path: Path) -> None:
    config = tiny_config("llama")
    freqs = np.linspace(1.0, 3.0, 8, dtype=np.float32)
    path = write_tiny_gguf(
        tmp_path / "m.gguf",
        config,
        random_state(config),
        extra_float_tensors={"rope_freqs.weight": freqs},
    )
    loaded_config, _ = _load(path)
    assert loaded_config.rope_scaling is None
    assert loaded_config.extra["rope_freqs"] == pytest.approx(freqs.tolist())


def test_mistral_named_llama_file(tmp_path: Path) -> None:
    config = tiny_config("llama")
    path = write_tiny_gguf(
        tmp_path / "m.gguf", config, random_state(config), name="Mistral 7B Instruct v0.3"
    )
    loaded_config, _ = _load(path)
    assert loaded_config.architecture == "mistral"


def test_tiny_gguf_through_load_model_files(tmp_path: Path) -> None:
    config = tiny_config("qwen3")
    path = write_tiny_gguf(tmp_path / "m.gguf", config, random_state(config))
    loaded = load_model_files(path, dtype=torch.bfloat16)
    assert loaded.format == "gguf" and loaded.source == path
    assert all(t.dtype == torch.bfloat16 for t in loaded.state_dict.values())
    assert loaded.tokenizer.decode(loaded.tokenizer.encode("héllo <|im_end|>")) == "héllo "
    assert loaded.config.eos_token_ids == [2, 0]


# -- errors -----------------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_model_files(tmp_path / "nope.gguf")


def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_text("this is not a model\n")
    with pytest.raises(CorruptModelError, match="corrupt or truncated"):
        load_model_files(path)
    with pytest.raises(CorruptModelError, match="corrupt or truncated"):
        open_gguf(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    with pytest.raises(CorruptModelError, match="corrupt or truncated"):
        load_model_files(path)


@pytest.mark.slow
@pytest.mark.parametrize("n_bytes", [8, 24, 1000, 400_000, 3_000_000, 60_000_000])
def test_truncated_embedded_file(tmp_path: Path, embedded_path: Path, n_bytes: int) -> None:
    """Cut inside the header, the key/values, the tensor table, and the tensor data."""
    path = tmp_path / "cut.gguf"
    with embedded_path.open("rb") as src:
        path.write_bytes(src.read(n_bytes))
    with pytest.raises(CorruptModelError, match="corrupt or truncated"):
        load_model_files(path)


def test_garbage_after_magic(tmp_path: Path) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(b"GGUF" + bytes([3, 0, 0, 0]) + b"\xff" * 64)
    with pytest.raises(CorruptModelError, match="corrupt or truncated"):
        load_model_files(path)


def test_unsupported_architecture(tmp_path: Path) -> None:
    config = tiny_config("llama")
    path = write_tiny_gguf(tmp_path / "m.gguf", config, random_state(config), arch="mamba")
    with pytest.raises(UnsupportedArchitectureError, match="'mamba'.*llama, qwen2, qwen3"):
        load_model_files(path)


def test_unsupported_quantization(tmp_path: Path) -> None:
    config = tiny_config("llama")
    state = random_state(config)
    del state["model.layers.1.mlp.gate_proj.weight"]
    block, size = GGML_QUANT_SIZES[Q.IQ4_NL]
    raw = np.zeros((96, 64 // block * size), dtype=np.uint8)
    path = write_tiny_gguf(
        tmp_path / "m.gguf", config, state, raw_tensors={"blk.1.ffn_gate.weight": (raw, Q.IQ4_NL)}
    )
    with pytest.raises(UnsupportedQuantizationError, match="blk.1.ffn_gate.weight.*IQ4_NL"):
        load_model_files(path)


def test_missing_tensor(tmp_path: Path) -> None:
    config = tiny_config("llama")
    state = random_state(config)
    del state["model.layers.1.mlp.gate_proj.weight"]
    path = write_tiny_gguf(tmp_path / "m.gguf", config, state)
    with pytest.raises(CorruptModelError, match="mlp.gate_proj"):
        load_model_files(path)
