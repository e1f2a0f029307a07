"""`tokenfactory bench engine`: offline throughput, a decode sweep and prefill speed.

Every figure is set beside the machine's roofline measured in the same run: a decode step
cannot beat (weights + KV bytes read) / memory bandwidth, nor its FLOPs / matmul rate.
"""

from __future__ import annotations

import platform
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from tokenfactory.bench.roofline import Roofline, measure_roofline
from tokenfactory.engine.attention import KVCache
from tokenfactory.engine.engine import Engine
from tokenfactory.engine.sampling_params import SamplingParams


@dataclass
class BenchOptions:
    num_requests: int = 64
    input_len: tuple[int, int] = (100, 512)
    output_len: tuple[int, int] = (100, 256)
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4, 16, 64, 128, 256])
    sweep_context: int = 256
    sweep_steps: int = 16
    prefill_len: int = 512
    skip: set[str] = field(default_factory=set)
    seed: int = 0


def _random_prompt(rng: random.Random, n: int, vocab: int) -> list[int]:
    # Stay clear of the low ids where special tokens usually live.
    return [rng.randrange(256, vocab) for _ in range(n)]


def weight_bytes_read_per_step(engine: Engine) -> int:
    """Bytes of weights a forward pass streams: all parameters, except an untied embedding
    table, of which only the looked-up rows are read."""
    total = sum(p.numel() * p.element_size() for p in engine.model.parameters())
    if engine.model.lm_head is not None:
        emb = engine.model.embed_tokens.weight
        total -= emb.numel() * emb.element_size()
    return total


def _kv_bytes_per_token(engine: Engine) -> int:
    cfg = engine.model_config
    assert cfg.head_dim is not None
    elem = torch.empty(0, dtype=engine.dtype).element_size()
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * elem


def _flops_per_token(engine: Engine, context: int) -> float:
    cfg = engine.model_config
    assert cfg.head_dim is not None
    matmul = 2 * cfg.num_parameters() - 2 * cfg.vocab_size * cfg.hidden_size * (
        0 if cfg.tie_word_embeddings else 1
    )
    attention = 4 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * context
    return matmul + attention


def _sync(engine: Engine) -> None:
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)


def bench_offline(engine: Engine, opts: BenchOptions, console: Console) -> dict[str, Any]:
    rng = random.Random(opts.seed)
    vocab = engine.model_config.vocab_size
    room = engine.max_model_len
    reqs = []
    for _ in range(opts.num_requests):
        n_in = min(rng.randint(*opts.input_len), room - 1)
        n_out = min(rng.randint(*opts.output_len), room - n_in)
        reqs.append((_random_prompt(rng, n_in, vocab), n_out))
    # Warm up kernels and allocators outside the timed region.
    engine.generate([reqs[0][0][:32]], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    first: dict[str, float] = {}
    done: dict[str, float] = {}
    ntoks: dict[str, int] = {}
    start = time.monotonic()
    for i, (prompt, n_out) in enumerate(reqs):
        engine.add_request(
            prompt,
            SamplingParams(temperature=0, max_tokens=n_out, ignore_eos=True),
            request_id=f"offline-{i}",
        )
    with console.status("offline run...") as status:
        produced = 0
        while engine.has_unfinished():
            for out in engine.step():
                produced += len(out.token_ids)
                first.setdefault(out.request_id, time.monotonic())
                ntoks[out.request_id] = out.completion_tokens
                if out.finished:
                    done[out.request_id] = time.monotonic()
            status.update(f"offline run: {produced} tokens, {len(done)}/{len(reqs)} done")
    elapsed = time.monotonic() - start
    out_tokens = sum(ntoks.values())
    in_tokens = sum(len(p) for p, _ in reqs)
    speeds = [
        (ntoks[r] - 1) / (done[r] - first[r]) for r in done if ntoks[r] > 1 and done[r] > first[r]
    ]
    return {
        "num_requests": len(reqs),
        "input_tokens": in_tokens,
        "output_tokens": out_tokens,
        "elapsed_s": elapsed,
        "output_tokens_per_s": out_tokens / elapsed,
        "total_tokens_per_s": (in_tokens + out_tokens) / elapsed,
        "per_user_tokens_per_s_median": statistics.median(speeds) if speeds else None,
    }


def bench_decode(
    engine: Engine, batch: int, context: int, steps: int, roof: Roofline, seed: int
) -> dict[str, Any]:
    rng = random.Random(seed + batch)
    vocab = engine.model_config.vocab_size
    need_blocks = batch * -(-(context + steps + 2) // engine.config.block_size)
    if need_blocks > engine.num_kv_blocks or batch > engine.config.max_num_seqs:
        return {"batch": batch, "skipped": "KV cache or max_num_seqs too small for this batch"}
    # Sequences prefilled early decode while later ones prefill: give them room to keep
    # decoding through the timed steps (otherwise the batch shrinks before it is timed).
    prefill_steps = -(-batch * context // engine.config.max_num_batched_tokens)
    params = SamplingParams(temperature=0, max_tokens=steps + 4 + prefill_steps, ignore_eos=True)
    ids = [
        engine.add_request(_random_prompt(rng, context, vocab), params, f"sweep-{batch}-{i}")
        for i in range(batch)
    ]
    seen: set[str] = set()
    while len(seen) < batch:  # prefill every sequence first
        seen.update(o.request_id for o in engine.step())
    times = []
    kv_tokens = []
    for _ in range(steps):
        _sync(engine)
        t0 = time.perf_counter()
        outs = engine.step()
        _sync(engine)
        times.append(time.perf_counter() - t0)
        kv_tokens.append(engine.stats.recent(1)[0].num_kv_tokens_read)
        if len(outs) != batch:
            break
    for rid in ids:
        engine.abort(rid)
    step = statistics.median(times)
    # KV read as the engine counted it (sequences prefilled early carry a little more).
    ctx = round(statistics.median(kv_tokens) / batch)
    bytes_moved = weight_bytes_read_per_step(engine) + batch * ctx * _kv_bytes_per_token(engine)
    flops = batch * _flops_per_token(engine, ctx)
    floor = roof.step_floor_s(bytes_moved, flops)
    return {
        "batch": batch,
        "context": ctx,
        "steps_timed": len(times),
        "step_ms": step * 1e3,
        "step_ms_min": min(times) * 1e3,
        "tokens_per_s": batch / step,
        "tokens_per_s_per_user": 1 / step,
        "bytes_per_step": bytes_moved,
        "achieved_gbs": bytes_moved / step / 1e9,
        "roofline_step_ms": floor * 1e3,
        "roofline_fraction": floor / step,
        "bound": "memory"
        if bytes_moved / (roof.copy_bandwidth_gbs * 1e9) >= flops / (roof.matmul_tflops * 1e12)
        else "compute",
    }


def bench_prefill(engine: Engine, length: int, roof: Roofline, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    length = min(length, engine.max_model_len - 1, engine.config.max_num_batched_tokens)
    params = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    prompt = _random_prompt(rng, length, engine.model_config.vocab_size)
    engine.generate([prompt[: min(64, length)]], params)  # warm-up
    times = []
    for i in range(3):
        # A fresh prompt each time so the prefix cache cannot help.
        prompt = _random_prompt(
            random.Random(seed + 100 + i), length, engine.model_config.vocab_size
        )
        _sync(engine)
        t0 = time.perf_counter()
        engine.generate([prompt], params)
        _sync(engine)
        times.append(time.perf_counter() - t0)
    t = min(times)
    flops = length * _flops_per_token(engine, length // 2)
    return {
        "prompt_tokens": length,
        "time_ms": t * 1e3,
        "tokens_per_s": length / t,
        "tflops": flops / t / 1e12,
        "matmul_fraction": flops / t / 1e12 / roof.matmul_tflops,
    }


def machine_description(engine: Engine) -> str:
    if engine.device.type == "cuda":
        return torch.cuda.get_device_name(engine.device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def engine_description(engine: Engine) -> dict[str, Any]:
    """KV capacity and the execution path, as the JSON reports them."""
    per_block = KVCache.bytes_per_block(engine.model_config, engine.config.block_size, engine.dtype)
    info: dict[str, Any] = {
        "kv_cache_blocks": engine.num_kv_blocks,
        "kv_cache_tokens": engine.num_kv_blocks * engine.config.block_size,
        "kv_cache_gib": engine.num_kv_blocks * per_block / 2**30,
        "weights_gib": weight_bytes_read_per_step(engine) / 2**30,
        "quantization": engine.config.quantization,  # None: the weights in the dtype
    }
    runner = engine.runner
    info["attention_backend"] = runner.backend
    info["fused_ops"] = runner.backend == "triton"
    graphs = runner.graphs
    info["cuda_graph_buckets"] = sorted(graphs.graphs) if graphs is not None else []
    info["cuda_graph_capture_s"] = graphs.capture_seconds if graphs is not None else 0.0
    return info


def run_engine_bench(
    engine: Engine,
    opts: BenchOptions,
    console: Console,
    on_part: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """The whole benchmark; `on_part` gets the result so far after each part (for partial
    JSON when a run is cut short)."""
    console.print(
        f"[bold]tokenfactory bench engine[/bold]: {engine.model_name} on "
        f"{machine_description(engine)}, {str(engine.dtype)[6:]}"
        + (f", {engine.config.quantization} weights" if engine.config.quantization else "")
    )
    with console.status("measuring the roofline..."):
        roof = measure_roofline(engine.device, engine.dtype)
    console.print(
        f"roofline: copy bandwidth {roof.copy_bandwidth_gbs:.1f} GB/s, "
        f"matmul {roof.matmul_tflops:.2f} TFLOP/s ({roof.dtype}); weights read per step "
        f"{weight_bytes_read_per_step(engine) / 2**20:.0f} MiB"
    )
    result: dict[str, Any] = {
        "schema": "tokenfactory.bench.engine/1",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": engine.model_name,
        "device": str(engine.device),
        "machine": machine_description(engine),
        "dtype": str(engine.dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "roofline": roof.to_dict(),
        "options": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(opts).items()},
        "engine": engine_description(engine),
    }
    info = result["engine"]
    console.print(
        f"KV cache: {info['kv_cache_tokens']} tokens in {info['kv_cache_blocks']} blocks "
        f"({info['kv_cache_gib']:.1f} GiB); attention: {info['attention_backend']}"
        + (
            f"; {len(info['cuda_graph_buckets'])} decode CUDA graphs captured in "
            f"{info['cuda_graph_capture_s']:.1f} s"
            if info.get("cuda_graph_buckets")
            else ""
        )
    )
    notify = on_part or (lambda _r: None)
    notify(result)
    if "sweep" not in opts.skip:
        rows = []
        table = Table(title=f"decode sweep (context ~{opts.sweep_context})")
        for col in (
            "batch",
            "step ms",
            "tok/s",
            "tok/s/user",
            "GB/s",
            "roofline ms",
            "of roofline",
        ):
            table.add_column(col, justify="right")
        for b in opts.batch_sizes:
            with console.status(f"decode sweep: batch {b}..."):
                row = bench_decode(engine, b, opts.sweep_context, opts.sweep_steps, roof, opts.seed)
            rows.append(row)
            result["decode_sweep"] = rows
            notify(result)
            if "skipped" in row:
                table.add_row(str(b), "-", "-", "-", "-", "-", row["skipped"])
            else:
                table.add_row(
                    str(b),
                    f"{row['step_ms']:.1f}",
                    f"{row['tokens_per_s']:.0f}",
                    f"{row['tokens_per_s_per_user']:.1f}",
                    f"{row['achieved_gbs']:.1f}",
                    f"{row['roofline_step_ms']:.1f}",
                    f"{row['roofline_fraction']:.0%}",
                )
        console.print(table)
        result["decode_sweep"] = rows
    if "prefill" not in opts.skip:
        with console.status("prefill..."):
            pre = bench_prefill(engine, opts.prefill_len, roof, opts.seed)
        console.print(
            f"prefill: {pre['prompt_tokens']} tokens in {pre['time_ms']:.0f} ms = "
            f"{pre['tokens_per_s']:.0f} tokens/s, {pre['tflops']:.2f} TFLOP/s "
            f"({pre['matmul_fraction']:.0%} of the matmul rate)"
        )
        result["prefill"] = pre
        notify(result)
    if "offline" not in opts.skip:
        off = bench_offline(engine, opts, console)
        (i0, i1), (o0, o1) = opts.input_len, opts.output_len
        per_user = off["per_user_tokens_per_s_median"] or 0.0
        console.print(
            f"offline: {off['num_requests']} requests, input {i0}..{i1}, output {o0}..{o1}: "
            f"{off['output_tokens']} output tokens in {off['elapsed_s']:.1f} s = "
            f"[bold]{off['output_tokens_per_s']:.0f} output tokens/s[/bold], "
            f"median {per_user:.1f} tokens/s per user"
        )
        result["offline"] = off
        notify(result)
    return result
