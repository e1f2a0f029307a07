"""The decode stack (one native call for a CPU decode step's layers) against the model's
forward on the embedded model: the same logits bit for bit, at every row count that reads
Q4_1, through prefix-cache hits and preemption; and the steps and models it leaves alone."""

from __future__ import annotations

import pytest
import torch

from tokenfactory.engine.cpu_decode_stack import CpuDecodeStack
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.kernels import q4_linear

pytestmark = pytest.mark.skipif(
    not q4_linear.available() or q4_linear.decode_max_rows() == 0,
    reason="the Q4_1 kernels need AVX512-BF16",
)

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about tea.",
    "List three prime numbers.",
    "Explain what a hash table is in one sentence.",
    "Name a colour of the sky at sunset.",
]


@pytest.fixture
def stack_calls(monkeypatch):
    """How many steps ran through the stack."""
    calls = {"n": 0}
    original = CpuDecodeStack.__call__

    def counted(self, *args, **kwargs):
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CpuDecodeStack, "__call__", counted)
    return calls


def _run(engine, prompts, max_tokens=24):
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, logprobs=5, ignore_eos=True)
    return [(c.token_ids, [(lp.logprob, lp.top) for lp in c.logprobs]) for c in
            engine.generate([engine.chat_prompt([{"role": "user", "content": p}])
                             for p in prompts], params)]  # fmt: skip


@pytest.mark.parametrize("rows", [1, 3, len(PROMPTS)])
def test_same_logits_bit_for_bit_as_the_forward(make_engine, stack_calls, rows):
    with_stack = make_engine(cpu_decode_stack=True)
    without = make_engine(cpu_decode_stack=False)
    assert with_stack.runner.decode_stack is not None
    assert without.runner.decode_stack is None
    got = _run(with_stack, PROMPTS[:rows])
    assert stack_calls["n"] >= 20  # the decode steps went through it
    calls = stack_calls["n"]
    assert got == _run(without, PROMPTS[:rows])  # token ids and logprobs, floats equal
    assert stack_calls["n"] == calls


def test_same_through_prefix_hits_and_preemption(make_engine, stack_calls):
    # A small cache forces preemption (recompute) mid-decode; the repeated prompts and the
    # shared system prompt hit the prefix cache.
    prompts = PROMPTS * 2
    small = {"num_kv_blocks": 24}
    engine = make_engine(cpu_decode_stack=True, **small)
    got = _run(engine, prompts, max_tokens=48)
    assert engine.stats.total_preemptions > 0 and stack_calls["n"] > 0
    assert got == _run(make_engine(cpu_decode_stack=False, **small), prompts, max_tokens=48)


def test_steps_it_does_not_take_run_the_forward(make_engine, stack_calls):
    engine = make_engine(cpu_decode_stack=True)
    # Prompt steps, and decode steps of more rows than read Q4_1.
    many = q4_linear.decode_max_rows() + 1
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    out = engine.generate([f"Count to {i}." for i in range(many)], params)
    assert all(len(c.token_ids) == 4 for c in out)
    assert stack_calls["n"] == 0


def test_models_outside_its_shape_keep_the_forward(make_engine):
    engine = make_engine(dtype="float32", cpu_decode_stack=True)
    assert engine.runner.decode_stack is None  # not bf16


def test_bad_arguments_are_errors_not_wild_writes(make_engine):
    engine = make_engine(cpu_decode_stack=True)
    stack = engine.runner.decode_stack
    assert stack is not None
    op = torch.ops.tokenfactory.decode_layers
    hidden = engine.model_config.hidden_size
    d = engine.model_config.head_dim
    x = torch.zeros(1, hidden, dtype=torch.bfloat16)
    cos = torch.ones(1, d, dtype=torch.bfloat16)
    sin = torch.zeros(1, d, dtype=torch.bfloat16)
    tables = torch.zeros(1, 1, dtype=torch.int64)
    lens = torch.ones(1, dtype=torch.int64)
    slots = stack.k_caches[0].shape[0] * stack.k_caches[0].shape[1]  # one past the last
    args = (stack.k_caches, stack.v_caches, stack.norms, stack.codes, stack.scales)
    before = stack.k_caches[0].clone()
    with pytest.raises(ValueError, match="slot is out of range"):
        op(x, cos, sin, torch.tensor([slots]), tables, lens, *args, stack.heads, 1e-5, 0.125)
    assert torch.equal(stack.k_caches[0], before)
    with pytest.raises(RuntimeError, match="four linears"):
        op(x, cos, sin, torch.tensor([0]), tables, lens, stack.k_caches, stack.v_caches,
           stack.norms, stack.codes[:-1], stack.scales, stack.heads, 1e-5, 0.125)  # fmt: skip
    with pytest.raises(RuntimeError, match="cos must be"):
        op(x, cos[:, :8], sin, torch.tensor([0]), tables, lens, *args, stack.heads, 1e-5, 0.125)
