"""The one model runner: backend selection, every attention backend present against the
dense reference (decodes, prompts after cached context, a multi-token span after context),
and the decode-graph runner's padding."""

from __future__ import annotations

import logging

import pytest
import torch

from tests.engine.engine_fixtures import TINY, prompts, tiny_engine
from tokenfactory.engine import backend_selection
from tokenfactory.engine.attention import KVCache
from tokenfactory.engine.attention_backends import CpuAttention, TorchAttention, TritonAttention
from tokenfactory.engine.backend_selection import (
    Backends,
    make_backends,
    resolve_attention_backend,
)
from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.model_setup import build_model
from tokenfactory.engine.runner import ModelRunner
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.engine.scheduler import ScheduledChunk, SchedulerOutput
from tokenfactory.engine.sequence import Sequence
from tokenfactory.models.config import ModelConfig
from tokenfactory.models.llama import TORCH_OPS

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def triton_present(monkeypatch):
    def set_present(present: bool) -> None:
        monkeypatch.setattr(backend_selection, "triton_available", lambda: present)

    return set_present


def test_resolve_on_cpu(triton_present):
    for present in (False, True):
        triton_present(present)
        assert resolve_attention_backend("auto", CPU, TINY) == "cpu"
        assert resolve_attention_backend("torch", CPU, TINY) == "cpu"
    assert resolve_attention_backend("triton", CPU, TINY) == "triton"  # interpreter (tests)


def test_resolve_on_cuda(triton_present):
    triton_present(True)
    assert resolve_attention_backend("auto", CUDA, TINY) == "triton"
    assert resolve_attention_backend("torch", CUDA, TINY) == "torch"
    assert resolve_attention_backend("triton", CUDA, TINY) == "triton"
    triton_present(False)
    assert resolve_attention_backend("auto", CUDA, TINY) == "torch"
    with pytest.raises(ValueError, match="needs Triton"):
        resolve_attention_backend("triton", CUDA, TINY)
    with pytest.raises(ValueError, match="unknown"):
        resolve_attention_backend("flash", CUDA, TINY)


def test_triton_needs_power_of_two_heads(triton_present, caplog):
    triton_present(True)
    odd = ModelConfig(**{**TINY.__dict__, "hidden_size": 96, "head_dim": 24})
    with caplog.at_level(logging.WARNING):
        assert resolve_attention_backend("auto", CUDA, odd) == "torch"
        assert resolve_attention_backend("triton", CPU, odd) == "cpu"
    assert "not a power of two" in caplog.text


def test_make_backends():
    cache = KVCache.allocate(TINY, 4, 16, torch.float32, "cpu")
    cpu = make_backends("cpu", cache, TINY, CPU)
    assert type(cpu.attention) is CpuAttention and cpu.ops is TORCH_OPS
    assert cpu.attention.scale is None  # SDPA and the CPU kernel derive it, as always
    ref = make_backends("torch", cache, TINY, CPU)
    assert type(ref.attention) is TorchAttention and ref.ops is TORCH_OPS
    from tokenfactory.engine.ops_backends import TritonOps

    tri = make_backends("triton", cache, TINY, CPU)
    assert type(tri.attention) is TritonAttention and isinstance(tri.ops, TritonOps)
    assert tri.attention.scale == TINY.head_dim**-0.5


def test_engine_default_runner_on_cpu():
    runner = tiny_engine().runner
    assert runner.backend == "cpu" and runner.ops is TORCH_OPS and runner.graphs is None


# -- every backend present against the dense forward --------------------------------------


def _runner(name: str, static: bool = False) -> ModelRunner:
    cfg = EngineConfig(dtype="float32", static_decode=static, max_num_seqs=8)
    model = build_model(TINY, cfg, state_dict=None)
    model.init_random_weights(seed=1, std=0.3)
    cache = KVCache.allocate(TINY, 64, 16, torch.float32, "cpu")
    return ModelRunner(model, cache, cfg, backends=make_backends(name, cache, TINY, CPU))


def _seq(tokens: list[int], first_block: int) -> Sequence:
    seq = Sequence(f"s{first_block}", tokens, SamplingParams())
    seq.block_table = [first_block + 2 * i for i in range(-(-(len(tokens) + 2) // 16))]
    return seq


def _step(*chunks: tuple[Sequence, int, int]) -> SchedulerOutput:
    out = [ScheduledChunk(seq, start, n, start + n) for seq, start, n in chunks]
    return SchedulerOutput(out, [], 0, 0)


def _dense_last(runner: ModelRunner, tokens: list[int]) -> torch.Tensor:
    return runner.model.forward_dense(torch.tensor(tokens))[-1]


@pytest.mark.parametrize("name", ["cpu", "torch"])
def test_spans_match_dense_forward(name):
    check_spans_match_dense_forward(name)  # Triton's: tests/gpu/test_runner_paths.py


def check_spans_match_dense_forward(name: str) -> None:
    """Prompt chunks (from scratch and after cached context), a span of 5 query tokens after
    context (a speculative verification), and batched decodes: all give the dense logits."""
    runner = _runner(name)
    a, b, c = prompts(3, seed=4, lo=30, hi=50)
    sa, sb, sc = _seq(a, 0), _seq(b, 1), _seq(c, 30)
    # Step 1: a's first 20 tokens, b whole, c's first 17.
    runner.execute(_step((sa, 0, 20), (sb, 0, len(b) - 1), (sc, 0, 17)))
    # Step 2: b's last token decodes; a verifies 5 tokens after its 20; c continues.
    got = runner.execute(_step((sb, len(b) - 1, 1), (sa, 20, 5), (sc, 17, len(c) - 17)))
    want = [_dense_last(runner, b), _dense_last(runner, a[:25]), _dense_last(runner, c)]
    torch.testing.assert_close(got, torch.stack(want), atol=2e-4, rtol=2e-4)
    # Step 3: every sequence decodes one more token (b and c past their prompts).
    sb.output_token_ids.append(7)
    sc.output_token_ids.append(9)
    got = runner.execute(_step((sa, 25, 1), (sb, len(b), 1), (sc, len(c), 1)))
    want = [_dense_last(runner, a[:26]), _dense_last(runner, b + [7]), _dense_last(runner, c + [9])]
    torch.testing.assert_close(got, torch.stack(want), atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("name", ["cpu", "torch"])
def test_decode_graph_runner_pads_to_bucket(name):
    """Static decode (no capture on CPU): 3 decodes run as a bucket of 4; the padding row is
    token 0 at position 0 in the pad block, and the logits are the eager runner's."""
    static = _runner(name, static=True)
    eager = ModelRunner(
        static.model, static.cache, backends=make_backends(name, static.cache, TINY, CPU)
    )
    graphs = static.graphs
    assert graphs is not None and graphs.bucket(3) == 4 and not graphs.graphs
    seqs = [_seq(p, 10 * i) for i, p in enumerate(prompts(3, seed=6, lo=10, hi=40))]
    eager.execute(_step(*((s, 0, s.num_tokens - 1) for s in seqs)))
    decode = _step(*((s, s.num_tokens - 1, 1) for s in seqs))
    got = static.execute(decode).clone()
    cache = static.cache
    assert graphs.ids[3] == 0 and graphs.positions[3] == 0 and graphs.context_lens[3] == 1
    assert graphs.slots[3] == cache.pad_slot and graphs.block_tables[3, 0] == cache.pad_block
    torch.testing.assert_close(got, eager.execute(decode), atol=1e-5, rtol=1e-5)
    want = torch.stack([_dense_last(eager, s.prompt_token_ids) for s in seqs])
    torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)


def test_backends_can_be_injected():
    """A runner takes explicit backends (tests, or a kernel library not in the table)."""
    cfg = EngineConfig(dtype="float32")
    model = build_model(TINY, cfg, state_dict=None)
    cache = KVCache.allocate(TINY, 8, 16, torch.float32, "cpu")
    backends = Backends(TorchAttention(cache, None), TORCH_OPS)
    runner = ModelRunner(model, cache, cfg, backends=backends)
    assert runner.attention is backends.attention and runner.backend == "torch"


# -- the engine's equivalences on the portable torch reference ------------------------------


def _engine(name: str, **overrides):
    """A tiny engine whose runner uses the named backends (the default one is "cpu")."""
    engine = tiny_engine(**overrides)
    cache, model = engine.runner.cache, engine.model
    backends = make_backends(name, cache, TINY, CPU)
    engine.runner = ModelRunner(model, cache, engine.config, backends=backends)
    return engine


GREEDY = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=0)


def _tokens(results) -> list[list[int]]:
    return [r.token_ids for r in results]


def test_reference_backend_keeps_the_engine_equivalences():
    """On the torch reference: a batch = each request alone, prefix cache on = off,
    chunked prefill and forced preemption change nothing, no leaked blocks; and the tokens
    are the default (native decode) backend's."""
    from tests.engine.engine_fixtures import assert_no_leaks

    shared = prompts(1, seed=3, lo=40, hi=41)[0]
    batch = [shared + tail for tail in prompts(5, seed=4, lo=3, hi=20)] + prompts(5, seed=8)
    ref = _engine("torch")
    together = ref.generate(batch, GREEDY)
    alone = [_engine("torch").generate([p], GREEDY)[0] for p in batch]
    assert _tokens(together) == _tokens(alone)
    cached = _engine("torch")
    hits = cached.generate(batch[:1], GREEDY) + cached.generate(batch[1:], GREEDY)
    assert sum(r.cached_tokens for r in hits) == 4 * 32  # two shared blocks, four hits
    uncached = _engine("torch", enable_prefix_caching=False).generate(batch, GREEDY)
    assert _tokens(hits) == _tokens(uncached) == _tokens(together)
    tight = _engine("torch", num_kv_blocks=14, max_num_batched_tokens=32)
    squeezed = tight.generate(batch, GREEDY)
    assert tight.stats.total_preemptions > 0
    assert _tokens(squeezed) == _tokens(together)
    for engine in (ref, cached, tight):
        assert_no_leaks(engine)
    default = tiny_engine().generate(batch, GREEDY)
    assert _tokens(default) == _tokens(together)
    for a, b in zip(default, together, strict=True):
        for x, y in zip(a.logprobs, b.logprobs, strict=True):
            assert x.logprob == pytest.approx(y.logprob, abs=1e-4)
