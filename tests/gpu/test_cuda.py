"""The engine on a CUDA GPU: skipped (with the reason) on machines without one."""

from __future__ import annotations

import pytest
import torch

from tests.engine.engine_fixtures import TINY
from tests.gpu.conftest import needs_cuda, needs_triton

pytestmark = [needs_cuda, needs_triton]


def _small():
    from tokenfactory.bench.gpu_check import SMALL

    return SMALL


def test_cuda_engine_uses_triton_and_graphs():
    from tokenfactory.bench.gpu_check import _engine
    from tokenfactory.engine.ops_backends import TritonOps

    engine = _engine(_small(), std=0.1, max_num_seqs=32)
    runner = engine.runner
    assert engine.device.type == "cuda" and engine.dtype is torch.bfloat16
    assert runner.backend == "triton" and isinstance(runner.ops, TritonOps)
    assert runner.graphs is not None and sorted(runner.graphs.graphs) == [1, 2, 4, 8, 16, 32]
    assert engine.num_kv_blocks * engine.config.block_size >= 32 * 2048


def test_logits_match_cpu_float32_reference():
    from tokenfactory.bench.gpu_check import _engine, _prompts, check_logits

    small = _small()
    engine = _engine(small, std=0.1, max_num_seqs=16)
    result = check_logits(small, engine, _prompts(4, small.vocab_size, seed=1), max_tokens=8)
    assert result["ok"], result


def test_graphs_match_eager_and_prefix_cache_is_transparent():
    from tokenfactory.bench.gpu_check import check_graphs_vs_eager, check_prefix_cache

    small = _small()
    g = check_graphs_vs_eager(small, std=0.1)
    assert g["graphs_captured"] and g["identical_requests"] == g["requests"], g
    p = check_prefix_cache(small, std=0.1)
    assert p["identical"] and p["cached_tokens_with_cache"] > 0, p


def test_float32_tiny_engine_matches_cpu_tokens():
    """float32 on both sides: greedy tokens identical to the CPU engine."""
    from tests.engine.engine_fixtures import prompts, tiny_engine
    from tokenfactory.engine.sampling_params import SamplingParams

    batch = prompts(6, seed=2)
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    cpu = tiny_engine().generate(batch, params)
    gpu_engine = tiny_engine(device="cuda")
    # tiny_engine sets weights after construction on the CPU side; copy the CPU ones over.
    ref = tiny_engine()
    gpu_engine.model.load_state_dict({k: v.cuda() for k, v in ref.model.state_dict().items()})
    assert TINY.head_dim == 16
    gpu = gpu_engine.generate(batch, params)
    assert [c.token_ids for c in cpu] == [g.token_ids for g in gpu]


@pytest.mark.parametrize("batch", [1, 3, 17])
def test_decode_kernel_splits_agree(batch):
    from tokenfactory.kernels.triton_attention import paged_decode

    k = torch.randn(64, 16, 2, 64, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    bt = torch.randint(0, 64, (batch, 40), device="cuda")
    lens = torch.randint(1, 640, (batch,), device="cuda")
    q = torch.randn(batch, 8, 64, device="cuda", dtype=torch.bfloat16)
    one = paged_decode(q, k, v, bt, lens, 0.125, splits=1)
    for s in (2, 8, 16):
        torch.testing.assert_close(paged_decode(q, k, v, bt, lens, 0.125, splits=s), one,
                                   atol=2e-2, rtol=2e-2)  # fmt: skip


def test_async_scheduling_on_cuda_changes_no_token():
    """The next step queued before this one's tokens reach the host (pinned copies, an event
    per step, decode inputs from the device, captured graphs): the same tokens and logprobs."""
    from tests.engine.engine_fixtures import alternating_params, prompts, tiny_engine

    batch = prompts(8, seed=4)
    params = alternating_params(8, first=6, step=3, logprobs=1)
    weights = {k: v.cuda() for k, v in tiny_engine().model.state_dict().items()}
    results = []
    for mode in (False, True):
        engine = tiny_engine(device="cuda", async_scheduling=mode)
        engine.model.load_state_dict(weights)
        results.append(engine.generate(batch, params))
        assert sum(s.ran_ahead for s in engine.stats.recent()) > (10 if mode else -1)
    for a, b in zip(*results, strict=True):
        assert a.token_ids == b.token_ids
        assert [x.logprob for x in a.logprobs] == pytest.approx(
            [x.logprob for x in b.logprobs], abs=1e-4
        )
