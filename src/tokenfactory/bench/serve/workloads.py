"""Workloads: streams of sessions, each a series of requests (one for chat/random/trace).

A session is a generator: it yields `(delay_s, RequestSpec)` and is sent back the reply text
(None after an error, which ends agent sessions). The runner owns time and concurrency.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field

from tokenfactory.bench.serve.lengths import LengthDist
from tokenfactory.bench.serve.text import TextGen

Steps = Generator[tuple[float, "RequestSpec"], "str | None", None]


@dataclass
class RequestSpec:
    messages: list[dict[str, str]]
    input_tokens: int  # intended prompt size (approximate unless a tokenizer was given)
    max_tokens: int
    tier: str | None = None
    session: str | None = None
    step: int = 0
    cache_key: str | None = None
    task_id: str | None = None  # sent as X-Task-Id: the factory bills the session as one task

    def prompt_text(self) -> str:
        """The messages flattened for /v1/completions."""
        if len(self.messages) == 1:
            return self.messages[0]["content"]
        return "\n\n".join(f"{m['role']}: {m['content']}" for m in self.messages)


@dataclass
class Session:
    id: str
    tier: str | None
    steps: Steps
    timestamp_s: float | None = None  # trace replay: offset from the start


@dataclass
class Clamp:
    """Keeps input + output within `max_context`, counting what it shortened."""

    max_context: int | None = None
    clamped: int = 0

    def __call__(self, input_tokens: int, output_tokens: int) -> tuple[int, int]:
        if self.max_context is None or input_tokens + output_tokens <= self.max_context:
            return input_tokens, output_tokens
        self.clamped += 1
        output_tokens = min(output_tokens, max(self.max_context // 4, 1))
        return max(self.max_context - output_tokens, 1), output_tokens


@dataclass
class WorkloadOptions:
    name: str = "random"  # random | chat | agent | trace
    input_len: str | None = None
    output_len: str | None = None
    seed: int = 0
    max_context: int | None = None
    tier_mix: dict[str, float] = field(default_factory=dict)
    encode: Callable[[str], list[int]] | None = None
    # agent
    agent_system_tokens: int = 600
    agent_user_tokens: int = 40
    agent_tool_result_tokens: int = 100
    agent_turns: int = 2
    agent_steps: int = 3
    agent_tool_latency_s: float = 0.3
    agent_think_time_s: float = 2.0
    prompt_cache_key: bool = True
    task_prefix: str | None = None  # agent: each session's task id is this + its id
    # trace
    trace: str | None = None
    trace_speed: float = 1.0


DEFAULT_LENGTHS = {
    "random": ("128", "128"),
    "chat": ("lognormal:160,0.9", "lognormal:340,0.8"),  # ShareGPT-like means
    "agent": ("", "32..64"),
}


class TierPicker:
    def __init__(self, mix: dict[str, float], seed: int) -> None:
        self.names = list(mix)
        self.weights = list(mix.values())
        self.rng = random.Random(seed ^ 0x5EED)

    def __call__(self) -> str | None:
        if not self.names:
            return None
        return self.rng.choices(self.names, self.weights)[0]


def build_sessions(opts: WorkloadOptions, clamp: Clamp) -> Iterator[Session]:
    """Endless (random/chat/agent) or finite (trace) sessions."""
    pick = TierPicker(opts.tier_mix, opts.seed)
    if opts.name in ("random", "chat"):
        return _single_turn(opts, clamp, pick)
    if opts.name == "agent":
        return _agent_sessions(opts, clamp, pick)
    if opts.name == "trace":
        from tokenfactory.bench.serve.trace import trace_sessions

        return trace_sessions(opts, clamp, pick)
    raise ValueError(f"unknown workload {opts.name!r}: use random, chat, agent or trace")


def _lengths(opts: WorkloadOptions) -> tuple[LengthDist, LengthDist]:
    din, dout = DEFAULT_LENGTHS.get(opts.name, ("128", "128"))
    return (
        LengthDist.parse(opts.input_len or din or "128", lo=4),
        LengthDist.parse(opts.output_len or dout, lo=1),
    )


def _one(delay: float, spec: RequestSpec) -> Steps:
    yield delay, spec


def _single_turn(opts: WorkloadOptions, clamp: Clamp, pick: TierPicker) -> Iterator[Session]:
    rng = random.Random(opts.seed)
    text = TextGen(opts.seed, opts.encode)
    din, dout = _lengths(opts)
    i = 0
    while True:
        n_in, n_out = clamp(din.sample(rng), dout.sample(rng))
        content = text.question(n_in) if opts.name == "chat" else text.text(n_in)
        tier = pick()
        spec = RequestSpec([{"role": "user", "content": content}], n_in, n_out, tier, f"r{i}")
        yield Session(f"r{i}", tier, _one(0.0, spec))
        i += 1


TOOLS = ("read_file", "search_code", "run_tests", "open_url", "list_directory", "edit_file")


def agent_system_prompt(n_tokens: int, seed: int = 0) -> str:
    """The shared prefix: instructions then JSON tool schemas, about n tokens."""
    gen = TextGen(seed + 1)
    head = (
        "You are a coding agent working in a user's repository. Think step by step, call one "
        "tool at a time, and answer briefly when the task is done. Tools:\n"
    )
    schemas = []
    for name in TOOLS:
        schemas.append(
            json.dumps(
                {
                    "type": "function",
                    "function": {
                        "name": name,
                        "description": gen.sentence(),
                        "parameters": {
                            "type": "object",
                            "properties": {"path": {"type": "string"}, "query": {"type": "string"}},
                        },
                    },
                }
            )
        )
    base = head + "\n".join(schemas) + "\nRules: "
    used = round(len(base.split()) / 0.6)  # JSON is token-dense: ~0.6 words per token
    return base + gen.text(max(n_tokens - used, 8))


def _agent_sessions(opts: WorkloadOptions, clamp: Clamp, pick: TierPicker) -> Iterator[Session]:
    system = agent_system_prompt(opts.agent_system_tokens, opts.seed)
    _, dout = _lengths(opts)
    i = 0
    while True:
        sid = f"agent-{opts.seed}-{i}"
        tier = pick()
        steps = _agent_steps(opts, clamp, system, dout, sid, tier, random.Random(opts.seed + i))
        yield Session(sid, tier, steps)
        i += 1


def _agent_steps(
    opts: WorkloadOptions,
    clamp: Clamp,
    system: str,
    dout: LengthDist,
    sid: str,
    tier: str | None,
    rng: random.Random,
) -> Steps:
    text = TextGen(rng.randrange(2**31), opts.encode)
    messages = [{"role": "system", "content": system}]
    context = opts.agent_system_tokens
    step = 0
    for turn in range(opts.agent_turns):
        user = text.question(opts.agent_user_tokens)
        messages.append({"role": "user", "content": user})
        context += opts.agent_user_tokens
        for call in range(opts.agent_steps):
            if turn == 0 and call == 0:
                delay = 0.0
            else:
                mean = opts.agent_think_time_s if call == 0 else opts.agent_tool_latency_s
                delay = rng.expovariate(1 / mean) if mean > 0 else 0.0
            n_out = dout.sample(rng)
            if opts.max_context is not None and context + n_out > opts.max_context:
                clamp.clamped += 1  # the session ends where it would overflow the context
                return
            spec = RequestSpec(
                list(messages),
                context,
                n_out,
                tier,
                sid,
                step,
                sid if opts.prompt_cache_key else None,
                None if opts.task_prefix is None else opts.task_prefix + sid,
            )
            reply = yield delay, spec
            step += 1
            if reply is None:
                return
            messages.append({"role": "assistant", "content": reply or "(no output)"})
            context += n_out
            if call < opts.agent_steps - 1:
                tool = rng.choice(TOOLS)
                result = text.text(opts.agent_tool_result_tokens)
                messages.append({"role": "user", "content": f"Tool result ({tool}): {result}"})
                context += opts.agent_tool_result_tokens
