"""The runner's GPU paths on CPU: bucketed static-buffer decode (the CUDA graph runner with
capture skipped), the Triton attention backend (interpreted) and the Triton small ops in the
one model forward, each checked against the default eager CPU path."""

from __future__ import annotations

import pytest
import torch

from tests.engine.engine_fixtures import (
    TINY,
    alternating_params,
    assert_no_leaks,
    prompts,
    tiny_engine,
)
from tests.gpu.conftest import HAS_CUDA, needs_triton
from tokenfactory.engine.cuda_graphs import batch_buckets
from tokenfactory.engine.sampling_params import SamplingParams

# With a GPU present the kernels compile for it, not for CPU tensors: test_cuda.py covers them.
interpreted = pytest.mark.skipif(HAS_CUDA, reason="interpreted-Triton variant (CPU only)")

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=0)


def _run(engine, batch):
    return engine.generate(batch, GREEDY)


def _same(a, b, tol=1e-4):
    for x, y in zip(a, b, strict=True):
        assert x.token_ids == y.token_ids
        for lx, ly in zip(x.logprobs, y.logprobs, strict=True):
            assert lx.logprob == pytest.approx(ly.logprob, abs=tol)


def test_buckets():
    assert batch_buckets(1) == [1]
    assert batch_buckets(5) == [1, 2, 4, 5]
    b = batch_buckets(512)
    assert b[:6] == [1, 2, 4, 8, 16, 32] and b[-1] == 512 and 256 in b and 288 in b
    assert all(x < y for x, y in zip(b, b[1:], strict=False))


def test_pad_block_is_reserved():
    engine = tiny_engine()
    cache = engine.runner.cache
    assert cache.k[0].shape[0] == engine.num_kv_blocks + 1
    assert cache.pad_block == engine.num_kv_blocks == engine.block_manager.num_blocks


def test_static_decode_torch_matches_eager():
    """Padding to buckets (5 -> 8, then shrinking as requests finish) changes nothing."""
    batch = prompts(5, seed=3)
    fast = tiny_engine(static_decode=True, attention_backend="torch")
    graphs = fast.runner.graphs
    assert graphs is not None and not graphs.graphs  # buffers, no capture on CPU
    params = [
        SamplingParams(temperature=0, max_tokens=4 + 3 * i, ignore_eos=True, logprobs=0)
        for i in range(5)
    ]
    ref = tiny_engine().generate(batch, params)
    got = fast.generate(batch, params)
    _same(got, ref)
    assert_no_leaks(fast)
    # Padding rows wrote only into the reserved block.
    touched = fast.runner.cache.k[0].abs().sum(dim=(1, 2, 3)).nonzero().flatten().tolist()
    assert fast.num_kv_blocks in touched


def test_static_decode_with_prefix_cache_and_chunking():
    shared = list(range(1, 40))
    batch = [shared + [50 + i] * (i + 1) for i in range(6)]
    ref = _run(tiny_engine(enable_prefix_caching=False), batch)
    got = _run(
        tiny_engine(static_decode=True, attention_backend="torch", max_num_batched_tokens=24),
        batch,
    )
    _same(got, ref)


@needs_triton
@interpreted
@pytest.mark.parametrize("static", [False, True])
def test_triton_backend_matches_eager(static):
    """Triton kernels (interpreted on CPU) + fused ops vs the classic CPU path, float32."""
    batch = prompts(4, seed=5, lo=5, hi=40)
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=0)
    ref = tiny_engine().generate(batch, params)
    engine = tiny_engine(attention_backend="triton", static_decode=static)
    assert engine.runner.backend == "triton"
    got = engine.generate(batch, params)
    _same(got, ref, tol=1e-3)
    assert_no_leaks(engine)


@needs_triton
@interpreted
def test_triton_prefix_cached_prefill_attends_over_cached_blocks():
    shared = list(range(3, 3 + 37))
    batch = [shared + [7, 8, 9], shared + [10]]
    params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True, logprobs=0)
    ref = tiny_engine(enable_prefix_caching=False).generate(batch, params)
    engine = tiny_engine(attention_backend="triton")
    first = engine.generate([batch[0]], params)
    second = engine.generate([batch[1]], params)
    assert second[0].cached_tokens == 32
    _same(first + second, ref, tol=1e-3)


@needs_triton
@interpreted
def test_triton_spans_match_dense_forward():
    from tests.engine.test_runner_backends import check_spans_match_dense_forward

    check_spans_match_dense_forward("triton")


@needs_triton
@interpreted
def test_triton_ops_match_torch_ops():
    """The one forward with Triton's small ops vs with the torch ops, no cache."""
    from tokenfactory.engine.config import EngineConfig
    from tokenfactory.engine.model_setup import build_model
    from tokenfactory.engine.ops_backends import TritonOps
    from tokenfactory.models.llama import DenseCausalAttention

    model = build_model(TINY, EngineConfig(dtype="float32"), state_dict=None)
    ids = torch.tensor(prompts(1, seed=9)[0])
    pos = torch.arange(ids.shape[0])
    with torch.inference_mode():
        ref = model(ids, pos, DenseCausalAttention())
        got = model(ids, pos, DenseCausalAttention(), ops=TritonOps())
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_gpu_check_script_dry_run_on_cpu(monkeypatch):
    """The check script's correctness code, on CPU with the static-buffer decode (no GPU)."""
    from tokenfactory.bench import gpu_check

    monkeypatch.setattr(
        gpu_check,
        "ENGINE_DEFAULTS",
        {"device": "cpu", "dtype": "float32", "static_decode": True, "attention_backend": "torch"},
    )
    small = TINY
    out = gpu_check.correctness(small, std=0.3, batch=8)
    assert out["logits_vs_cpu_fp32"]["ok"], out
    assert out["batch_invariance"]["identical"]
    assert out["prefix_cache"]["identical"] and out["prefix_cache"]["cached_tokens_with_cache"]
    g = out["graphs_vs_eager"]
    assert g["identical_requests"] == g["requests"] and not g["graphs_captured"]
    assert gpu_check._verdict(
        {"small_random": {**out, "graphs_vs_eager": {**g, "graphs_captured": True}}}
    )


@needs_triton
@interpreted
def test_async_scheduling_through_triton_and_the_static_buffers():
    """Decodes reading the step before's sampled ids on the device (`TokenFill`), written into
    the static input buffers the CUDA graphs replay."""
    batch = prompts(4, seed=6, lo=5, hi=40)
    params = alternating_params(4, first=5, step=2, logprobs=0)
    ref = tiny_engine(attention_backend="triton", static_decode=True).generate(batch, params)
    engine = tiny_engine(attention_backend="triton", static_decode=True, async_scheduling=True)
    got = engine.generate(batch, params)
    _same(got, ref)
    assert sum(s.ran_ahead for s in engine.stats.recent()) > 5
    assert_no_leaks(engine)
