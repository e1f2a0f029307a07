"""Small engines for tests: a tiny random model (fast) and leak checks shared by engine tests."""

from __future__ import annotations

import torch

from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.engine import Engine
from tokenfactory.engine.model_setup import build_model
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.models.config import ModelConfig

TINY = ModelConfig(
    architecture="llama",
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rope_theta=10000.0,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
    eos_token_ids=[0],
    name="tiny-random",
)


def tiny_engine(**overrides) -> Engine:
    """fp32 random-weight engine; large weights make greedy choices far from ties."""
    cfg = EngineConfig(dtype="float32", num_kv_blocks=256, block_size=16)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    model = build_model(TINY, cfg, state_dict=None)
    model.init_random_weights(seed=1, std=0.3)
    return Engine(model, tokenizer=None, config=cfg, model_name="tiny")


def prompts(n: int, seed: int = 0, lo: int = 5, hi: int = 60) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(lo, hi, (1,), generator=g))
        out.append(torch.randint(1, TINY.vocab_size, (length,), generator=g).tolist())
    return out


def alternating_params(n: int, first: int, step: int, logprobs: int) -> list[SamplingParams]:
    """Greedy and seeded sampled rows in turn, max_tokens first, first + step, ..., EOS
    ignored: outputs that any correct schedule reproduces exactly."""
    return [
        SamplingParams(
            temperature=0.8 if i % 2 else 0.0,
            seed=i,
            max_tokens=first + step * i,
            ignore_eos=True,
            logprobs=logprobs,
        )
        for i in range(n)
    ]


def assert_no_leaks(engine: Engine) -> None:
    """Block accounting holds; with nothing in flight every block is free (or merely cached)."""
    live = [*engine.scheduler.running, *engine.scheduler.waiting]
    engine.block_manager.check_invariants(live)
    if not engine.has_unfinished():
        assert not live
        assert engine.block_manager.num_free_blocks == engine.num_kv_blocks
