"""The embedded model's decode steps on its stored Q4_1 weights: the same text up to near ties,
fewer bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.engine import Engine
from tokenfactory.engine.model_setup import build_model
from tokenfactory.engine.outputs import RequestOutput
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.kernels import q4_linear
from tokenfactory.kernels.q4_linear import Q4Weight
from tokenfactory.kernels.q8_linear import Q8Weight
from tokenfactory.models.loader import LoadedModel, load_model_files

needs_kernel = pytest.mark.skipif(
    not q4_linear.available(), reason="the Q4_1 kernel needs AVX512-BF16 and gcc"
)


def _engine(loaded: LoadedModel, q4: bool) -> Engine:
    config = EngineConfig(num_kv_blocks=512, q4_decode=q4)
    model = build_model(loaded.config, config, loaded.state_dict)
    if q4:
        assert model.attach_q4_weights(loaded.q4_weights) == 4 * loaded.config.num_hidden_layers
    return Engine(model, loaded.tokenizer, config, model_name="smollm2")


def test_the_embedded_gguf_has_every_layer_linear_as_q4_1(embedded_model: LoadedModel) -> None:
    layers = embedded_model.config.num_hidden_layers
    q4 = [w for w in embedded_model.q4_weights.values() if isinstance(w, Q4Weight)]
    assert len(q4) == 7 * layers  # q, k, v, o, gate, up, down
    # and the token embedding (the tied lm_head), stored as Q8_0
    embed = embedded_model.q4_weights["model.embed_tokens.weight"]
    assert isinstance(embed, Q8Weight)
    assert torch.equal(embed.dequantize(), embedded_model.state_dict["model.embed_tokens.weight"])
    for name, weight in embedded_model.q4_weights.items():
        dense = embedded_model.state_dict[name]
        assert weight.shape == tuple(dense.shape)
    # rows in the dequantized state dict's order (q and k rows are un-permuted for llama)
    name = "model.layers.0.self_attn.q_proj.weight"
    q4 = embedded_model.q4_weights[name]
    assert torch.equal(q4.dequantize(), embedded_model.state_dict[name])


# Logits are bf16: at this model's logit sizes one rounding step is 0.125 nats. Two candidates
# within two steps are a near tie; the chosen token's log-probability may move by a few steps
# (its logit and the normalizer both move; measured up to 0.26 nats).
NEAR_TIE_NATS = 0.25
SAME_TOKEN_NATS = 0.5


def assert_same_until_a_near_tie(dense: RequestOutput, packed: RequestOutput) -> int:
    """The Q4_1 route rounds activations to int8 per block, so its logits differ from the
    bf16 weights' by about a rounding step: greedy text is the same until two candidates are
    that close, where either may win. Returns how many tokens matched."""
    for i, (a, b) in enumerate(zip(dense.logprobs, packed.logprobs, strict=False)):
        if a.token_id != b.token_id:
            top = dict(a.top)
            assert b.token_id in top and top[b.token_id] >= a.logprob - NEAR_TIE_NATS, (
                f"token {i}: {b.token_id} is no near tie of {a.top}"
            )
            return i
        assert abs(a.logprob - b.logprob) <= SAME_TOKEN_NATS, f"token {i}"
    return len(dense.logprobs)


@needs_kernel
def test_one_sequence_decodes_the_same_tokens_until_a_near_tie(
    embedded_model: LoadedModel,
) -> None:
    params = SamplingParams(max_tokens=24, temperature=0.0, logprobs=3)
    prompts = ["The three primary colours are", "Name a prime number.", "Say hello."]
    matched = []
    for prompt in prompts:
        dense = _engine(embedded_model, q4=False).generate(prompt, params)[0]
        packed = _engine(embedded_model, q4=True).generate(prompt, params)[0]
        matched.append(assert_same_until_a_near_tie(dense, packed))
    assert min(matched) >= 5, matched


@needs_kernel
def test_a_few_sequences_decode_through_it_too(embedded_model: LoadedModel) -> None:
    params = SamplingParams(max_tokens=16, temperature=0.0, logprobs=3)
    prompts = ["What is the capital of France?", "Name a prime number.", "Say hello."]
    dense = _engine(embedded_model, q4=False).generate(prompts, params)
    packed = _engine(embedded_model, q4=True).generate(prompts, params)
    for a, b in zip(dense, packed, strict=True):
        assert_same_until_a_near_tie(a, b)


def test_float32_weights_keep_their_own_linears(embedded_model: LoadedModel) -> None:
    model = build_model(embedded_model.config, EngineConfig(dtype="float32"), None)
    assert model.attach_q4_weights(embedded_model.q4_weights) == 0
    assert all(layer.qkv_proj.q4 is None for layer in model.layers)


@needs_kernel
def test_a_q4_weight_of_the_wrong_shape_is_refused(embedded_model: LoadedModel) -> None:
    model = build_model(embedded_model.config, EngineConfig(), None)
    weights = dict(embedded_model.q4_weights)
    weights["model.layers.2.mlp.down_proj.weight"] = weights["model.layers.2.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match="layer 2"):
        model.attach_q4_weights(weights)


@pytest.mark.parametrize("q4", [True, False])
def test_engine_config_switches_it(
    embedded_model: LoadedModel, monkeypatch: pytest.MonkeyPatch, q4: bool
) -> None:
    asked: list[bool] = []

    def load(*args: object, q4_weights: bool = False, **kwargs: object) -> LoadedModel:
        asked.append(q4_weights)
        return embedded_model

    monkeypatch.setattr("tokenfactory.models.loader.load_model_files", load)
    engine = Engine.from_model_path(None, EngineConfig(num_kv_blocks=64, q4_decode=q4))
    attached = [layer.down_proj.q4 is not None for layer in engine.model.layers]
    assert all(attached) == (q4 and q4_linear.available())
    assert asked == [q4]  # the stored Q4_1 weights are only kept when they will be read


def test_q4_weights_are_kept_only_when_asked_for(embedded_path: Path) -> None:
    plain = load_model_files(embedded_path, dtype=torch.bfloat16, check_memory=False)
    assert plain.q4_weights == {}


@needs_kernel
def test_a_token_decoded_beside_prompt_tokens_is_computed_as_in_a_decode_only_step(
    embedded_model: LoadedModel,
) -> None:
    """Greedy text does not depend on other requests' arrivals: a decode that shares its step
    with prompt chunks reads the Q4_1 route as a decode-only step would (ModelRunner
    `_decodes_apart`), so its log-probabilities are the same to the last bit."""
    params = SamplingParams(max_tokens=20, temperature=0.0, logprobs=3)
    prompt = "The three primary colours are"
    others = [
        f"Request {i}: tell me about the history of the printing press in Europe. " * 6
        for i in range(3)
    ]

    def decode(arrivals: list[str]) -> tuple[list[tuple[int, float]], int]:
        config = EngineConfig(num_kv_blocks=512, max_num_batched_tokens=48)
        model = build_model(embedded_model.config, config, embedded_model.state_dict)
        model.attach_q4_weights(embedded_model.q4_weights)
        engine = Engine(model, embedded_model.tokenizer, config, model_name="smollm2")
        rid = engine.add_request(prompt, params)
        got: list[tuple[int, float]] = []
        # Its prompt runs alone in both cases; the others arrive once it decodes.
        while not got:
            got += [(lp.token_id, lp.logprob) for o in engine.step() for lp in o.logprobs or []]
        for text in arrivals:
            engine.add_request(text, SamplingParams(max_tokens=2, temperature=0.0))
        before = engine.stats.total_steps
        while engine.has_unfinished():
            for out in engine.step():
                if out.request_id == rid:
                    got += [(lp.token_id, lp.logprob) for lp in out.logprobs or []]
        steps = engine.stats.recent(engine.stats.total_steps - before)
        mixed = sum(1 for s in steps if s.num_decode_tokens and s.num_prefill_tokens)
        return got, mixed

    alone, none_mixed = decode([])
    beside, mixed = decode(others)
    assert none_mixed == 0 and mixed >= 5  # the prompts ran in chunks beside its decodes
    assert len(alone) == len(beside) == params.max_tokens
    assert beside == alone
