"""Our forward pass against Hugging Face transformers on the same weights, in float32.

Covers the embedded SmolLM2 GGUF (Q4_1, dequantized, llama Q/K permutation undone) and tiny
random Llama-3-style (llama3 RoPE scaling, untied head, GQA) and Qwen3-style (q/k norm, tied,
head_dim != hidden/heads) Hugging Face directories written by the test itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.models.hf_fixtures import write_tiny_llama3_dir, write_tiny_qwen3_dir
from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.engine import Engine
from tokenfactory.engine.model_setup import build_model
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.models.embedded import embedded_model_path
from tokenfactory.models.loader import load_model_files

pytestmark = pytest.mark.e2e

transformers = pytest.importorskip("transformers")

TEXT = (
    "<|im_start|>user\nExplain paged attention in two sentences, then list three prime "
    "numbers.<|im_end|>\n<|im_start|>assistant\n"
)


def _ours(path: Path | None) -> tuple[torch.nn.Module, list[int]]:
    loaded = load_model_files(path)
    model = build_model(loaded.config, EngineConfig(dtype="float32"), loaded.state_dict)
    ids = loaded.tokenizer.encode(TEXT)
    return model, ids


def _compare(ours: torch.nn.Module, ref: torch.nn.Module, ids: list[int]) -> None:
    x = torch.tensor(ids)
    got = ours.forward_dense(x).float()
    with torch.no_grad():
        want = ref(x.unsqueeze(0)).logits[0].float()
    assert got.shape == want.shape
    scale = want.abs().max().item()
    err = (got - want).abs().max().item()
    assert err <= 1e-4 * max(scale, 1.0), f"max abs logit error {err} (logit scale {scale})"
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_embedded_smollm2_gguf_logits_match_transformers():
    path = embedded_model_path()
    ours, ids = _ours(path)
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    _compare(ours, ref, ids)


@pytest.mark.parametrize("writer", [write_tiny_llama3_dir, write_tiny_qwen3_dir])
def test_tiny_hf_directory_logits_match_transformers(tmp_path, writer):
    path = writer(tmp_path / "model")
    ours, ids = _ours(path)
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    _compare(ours, ref, ids)


def test_paged_engine_matches_dense_forward(tmp_path):
    """Chunked prefill over the paged cache + batched decode == one dense pass over the text."""
    path = write_tiny_qwen3_dir(tmp_path / "model")
    loaded = load_model_files(path)
    config = EngineConfig(dtype="float32", num_kv_blocks=64, block_size=4, max_num_batched_tokens=7)
    model = build_model(loaded.config, config, loaded.state_dict)
    engine = Engine(model, loaded.tokenizer, config)
    ids = loaded.tokenizer.encode(TEXT)
    out = engine.generate(
        [ids], SamplingParams(temperature=0, max_tokens=6, logprobs=2, ignore_eos=True)
    )[0]
    full = torch.tensor(ids + out.token_ids)
    ref = torch.log_softmax(model.forward_dense(full).float(), -1)
    for i, (tok, lp) in enumerate(zip(out.token_ids, out.logprobs, strict=True)):
        row = ref[len(ids) - 1 + i]
        assert tok == int(row.argmax())
        assert abs(lp.logprob - float(row[tok])) < 1e-4
