"""The `tokenfactory` command line: chat, generate and benchmark, thinly over the engine."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tokenfactory.billing.cli import invoice_command, keys_app, usage_command
from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.errors import InvalidRequestError
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.models.errors import ModelLoadError

app = typer.Typer(
    help="tokenfactory: an LLM token factory. Runs the embedded SmolLM2 model out of the box.",
    no_args_is_help=True,
    add_completion=False,
)
bench_app = typer.Typer(
    help="Measure the engine and the factory (the `bench` extra).", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")
app.add_typer(keys_app, name="keys")
app.command("usage")(usage_command)
app.command("invoice")(invoice_command)
err = Console(stderr=True)


@bench_app.callback()
def _bench_needs_its_extra() -> None:
    from rich.markup import escape

    from tokenfactory.bench.extra import INSTALL, missing_bench_modules

    missing = missing_bench_modules()
    if missing:
        err.print(
            f"[red]error:[/red] tokenfactory bench needs {', '.join(missing)}, from the bench "
            f"extra: {escape(INSTALL)}",
            soft_wrap=True,
        )
        raise typer.Exit(2)

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="GGUF file or Hugging Face directory (default: embedded)"),
]
RandomOpt = Annotated[
    str | None,
    typer.Option(help="Use a named architecture with random weights (e.g. llama-3.1-8b)"),
]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda or auto")]
DtypeOpt = Annotated[str, typer.Option(help="auto, bfloat16, float32 or float16")]
KvOpt = Annotated[
    float | None,
    typer.Option("--kv-cache-gb", help="KV cache size in GiB (default: share of free)"),
]
LenOpt = Annotated[int | None, typer.Option(help="Context window cap in tokens")]
ThreadsOpt = Annotated[int | None, typer.Option(help="CPU threads (default: every core)")]
SpeculationOpt = Annotated[
    str | None,
    typer.Option(
        help="Speculative decoding: ngram (prompt lookup) or draft (needs --draft-model); "
        "the scheduling policy decides per request and step how many tokens to draft"
    ),
]
SpecTokensOpt = Annotated[
    int, typer.Option(min=1, max=16, help="Most draft tokens a request verifies in one step")
]
DraftModelOpt = Annotated[
    str | None,
    typer.Option(help="Draft model for --speculation draft: a GGUF file or HF directory "
                 "sharing the model's tokenizer"),
]

AsyncOpt = Annotated[
    bool,
    typer.Option(
        "--async-scheduling",
        help="Plan and queue each step before the last one's tokens reach the host, so a "
        "GPU's step overlaps the host's work (not with --speculation)",
    ),
]


def _quantization(value: str | None) -> str | None:
    from tokenfactory.engine.config import QUANTIZATIONS

    if value not in QUANTIZATIONS:
        raise typer.BadParameter(f"--quantization must be fp8, not {value!r}")
    return value


QuantizationOpt = Annotated[
    str | None,
    typer.Option(
        help="Weight quantization at load: fp8 (float8 e4m3 weights with per-channel scales, "
        "activations per token; CPU, or CUDA compute capability >= 8.9)",
        callback=_quantization,
    ),
]


def _speculation(
    speculation: str | None,
    num_tokens: int,
    draft_model: str | None,
    async_scheduling: bool = False,
) -> dict[str, object]:
    """EngineConfig fields for the speculation and scheduling options (a draft model implies
    `draft`)."""
    if draft_model and speculation is None:
        speculation = "draft"
    if async_scheduling and (speculation or draft_model):
        err.print("[red]error:[/red] --async-scheduling does not combine with --speculation yet")
        raise typer.Exit(2)
    if speculation is not None and speculation not in ("ngram", "draft"):
        err.print(f"[red]error:[/red] --speculation must be ngram or draft, not {speculation!r}")
        raise typer.Exit(2)
    if speculation == "draft" and not draft_model:
        err.print("[red]error:[/red] --speculation draft needs --draft-model PATH")
        raise typer.Exit(2)
    return {
        "speculation": speculation,
        "num_speculative_tokens": num_tokens,
        "draft_model": draft_model,
        "async_scheduling": async_scheduling,
    }


def _engine_config(
    device: str,
    dtype: str,
    kv_cache_gb: float | None,
    max_model_len: int | None,
    threads: int | None,
    **extra: object,
) -> EngineConfig:
    return EngineConfig(
        device=device,
        dtype=dtype,
        kv_cache_bytes=int(kv_cache_gb * 2**30) if kv_cache_gb else None,
        max_model_len=max_model_len,
        num_threads=threads,
        **extra,  # type: ignore[arg-type]
    )


def _load_engine(model: str | None, random_weights: str | None, config: EngineConfig):
    from tokenfactory.engine.engine import Engine

    try:
        if random_weights:
            return Engine.from_random_weights(random_weights, config)
        with err.status("loading model..."):
            return Engine.from_model_path(model, config)
    except (ModelLoadError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command()
def chat(
    model: ModelOpt = None,
    system: Annotated[str | None, typer.Option(help="System prompt")] = None,
    temperature: float = 0.7,
    max_tokens: Annotated[int, typer.Option(help="Longest reply in tokens")] = 512,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    kv_cache_gb: KvOpt = None,
    max_model_len: LenOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Talk to the model in the terminal; replies stream token by token. /reset, /exit."""
    engine = _load_engine(
        model, None, _engine_config(device, dtype, kv_cache_gb, max_model_len, threads)
    )
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    err.print(
        f"[bold]{engine.model_name}[/bold] on {engine.device} ({str(engine.dtype)[6:]}). "
        "Type a message; /reset clears the conversation, /exit or Ctrl-D quits."
    )
    while True:
        try:
            line = input("> " if sys.stdin.isatty() else "")
        except (EOFError, KeyboardInterrupt):
            print()
            return
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return
        if line == "/reset":
            history = history[:1] if system else []
            err.print("[dim](conversation cleared)[/dim]")
            continue
        history.append({"role": "user", "content": line})
        params = SamplingParams(temperature=temperature, max_tokens=max_tokens)
        try:
            reply, stats = _stream_reply(engine, engine.chat_prompt(history), params)
        except InvalidRequestError as exc:
            err.print(f"[red]error:[/red] {exc}")
            history.pop()
            continue
        history.append({"role": "assistant", "content": reply})
        err.print(f"[dim]{stats}[/dim]")


def _stream_reply(engine, prompt: str, params: SamplingParams) -> tuple[str, str]:
    rid = engine.add_request(prompt, params)
    start = time.monotonic()
    first = None
    parts: list[str] = []
    n = 0
    try:
        while engine.has_unfinished():
            for out in engine.step():
                if out.request_id != rid:
                    continue
                if first is None:
                    first = time.monotonic()
                n = out.completion_tokens
                parts.append(out.text)
                sys.stdout.write(out.text)
                sys.stdout.flush()
    except KeyboardInterrupt:
        engine.abort(rid)
    print()
    end = time.monotonic()
    ttft = (first or end) - start
    speed = (n - 1) / (end - first) if first and n > 1 and end > first else 0.0
    return "".join(parts), f"{n} tokens, TTFT {ttft * 1000:.0f} ms, {speed:.1f} tokens/s"


@app.command()
def generate(
    prompt: Annotated[list[str], typer.Argument(help="One or more prompts (batched together)")],
    model: ModelOpt = None,
    chat_template: Annotated[
        bool, typer.Option("--chat/--raw", help="Wrap each prompt as a user chat message")
    ] = True,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
    max_tokens: int = 128,
    stop: Annotated[list[str] | None, typer.Option(help="Stop string (repeatable)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines")] = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    kv_cache_gb: KvOpt = None,
    max_model_len: LenOpt = None,
    threads: ThreadsOpt = None,
    speculation: SpeculationOpt = None,
    num_speculative_tokens: SpecTokensOpt = 4,
    draft_model: DraftModelOpt = None,
    quantization: QuantizationOpt = None,
) -> None:
    """Complete prompts offline and print the results."""
    spec = _speculation(speculation, num_speculative_tokens, draft_model)
    engine = _load_engine(
        model,
        None,
        _engine_config(
            device, dtype, kv_cache_gb, max_model_len, threads, quantization=quantization, **spec
        ),
    )
    try:
        params = SamplingParams(
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            max_tokens=max_tokens,
            stop=list(stop or []),
        )
        texts = [
            engine.chat_prompt([{"role": "user", "content": p}]) if chat_template else p
            for p in prompt
        ]
        start = time.monotonic()
        results = engine.generate(texts, params)
    except InvalidRequestError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    elapsed = time.monotonic() - start
    for p, r in zip(prompt, results, strict=True):
        if as_json:
            print(
                json.dumps(
                    {
                        "prompt": p,
                        "text": r.text,
                        "finish_reason": r.finish_reason.value if r.finish_reason else None,
                        "prompt_tokens": r.prompt_tokens,
                        "completion_tokens": len(r.token_ids),
                    }
                )
            )
        else:
            print(r.text)
            if len(prompt) > 1:
                print("-" * 40)
    total = sum(len(r.token_ids) for r in results)
    err.print(f"[dim]{total} tokens in {elapsed:.2f} s ({total / elapsed:.1f} tokens/s)[/dim]")


@app.command()
def serve(
    model: ModelOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default)")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    data_dir: Annotated[
        Path | None, typer.Option(help="Ledger, keys and probe cache (default: ~/.local/share)")
    ] = None,
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL of the ledger (default: SQLite)")
    ] = None,
    tiers: Annotated[Path | None, typer.Option(help="Tiers TOML file (default: shipped)")] = None,
    tier_preset: Annotated[str, typer.Option(help="auto, cpu or gpu promises")] = "auto",
    served_model_name: Annotated[
        list[str] | None, typer.Option(help="Name(s) clients use for the model")
    ] = None,
    policy: Annotated[
        str, typer.Option(help="Scheduling policy: tier (speed per tier), fcfs or priority")
    ] = "tier",
    max_num_seqs: Annotated[int, typer.Option(help="Most requests decoding at once")] = 64,
    grace_period: Annotated[
        float, typer.Option(help="Seconds in-flight requests get on shutdown")
    ] = 30.0,
    max_step_failures: Annotated[
        int,
        typer.Option(
            min=1, help="Failed engine steps in a row that mark the engine dead (/ready 503)"
        ),
    ] = 3,
    remeasure: Annotated[bool, typer.Option(help="Re-run the hardware probe")] = False,
    probe_batches: Annotated[
        str | None, typer.Option(help="Batch sizes the probe measures, e.g. 1,4,16,64")
    ] = None,
    max_waiting: Annotated[
        int, typer.Option(help="Queued requests beyond this are refused with 503")
    ] = 1024,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "warning",
    admin_key: Annotated[
        str | None,
        typer.Option(
            envvar="TOKENFACTORY_ADMIN_KEY",
            help="Opens /dashboard beyond loopback to whoever has this key",
        ),
    ] = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    kv_cache_gb: KvOpt = None,
    max_model_len: LenOpt = None,
    threads: ThreadsOpt = None,
    speculation: SpeculationOpt = None,
    num_speculative_tokens: SpecTokensOpt = 4,
    draft_model: DraftModelOpt = None,
    quantization: QuantizationOpt = None,
    async_scheduling: AsyncOpt = False,
    replicas: Annotated[
        int,
        typer.Option(
            min=1,
            help="Engine replicas, each a Ray actor in its own process (one GPU each where "
            "there are GPUs; on CPUs the threads are split); 1 serves in this process",
        ),
    ] = 1,
    ray_address: Annotated[
        str | None,
        typer.Option(help="Join this Ray cluster for the replicas (auto, or HEAD:6379)"),
    ] = None,
    routing: Annotated[
        str,
        typer.Option(
            help="How the front picks a replica (--replicas above 1): prefix (same prompt "
            "prefix or prompt_cache_key, same replica) or round-robin",
        ),
    ] = "prefix",
    step_log: Annotated[
        Path | None,
        typer.Option(
            help="Append every engine step to this file (JSON lines): `tokenfactory plan "
            "calibrate --step-log` fits the planner to steps under real load"
        ),
    ] = None,
) -> None:
    """Run the factory: an OpenAI-compatible server with priced tiers, keys and a ledger."""
    from tokenfactory.fleet.errors import FleetUnavailableError
    from tokenfactory.server.run import ServeOptions
    from tokenfactory.server.run import serve as run_server
    from tokenfactory.tiers import TierError

    if routing not in ("prefix", "round-robin"):
        raise typer.BadParameter("must be prefix or round-robin", param_hint="--routing")
    config = _engine_config(
        device, dtype, kv_cache_gb, max_model_len, threads, max_num_seqs=max_num_seqs,
        policy=policy, quantization=quantization,
        **_speculation(speculation, num_speculative_tokens, draft_model, async_scheduling),
    )
    opts = ServeOptions(
        model=model,
        host=host,
        port=port,
        data_dir=data_dir,
        database_url=database_url,
        tiers_file=str(tiers) if tiers else None,
        tier_preset=tier_preset,
        served_model_name=served_model_name or [],
        grace_period_s=grace_period,
        max_step_failures=max_step_failures,
        remeasure=remeasure,
        probe_batches=_batches(probe_batches),
        max_waiting=max_waiting,
        log_level=log_level,
        admin_key=admin_key,
        engine=config,
        replicas=replicas,
        ray_address=ray_address,
        routing=routing,
        step_log=step_log,
    )
    try:
        run_server(opts)
    except (ModelLoadError, TierError, OSError, ValueError, FleetUnavailableError) as exc:
        from rich.markup import escape

        err.print(f"[red]error:[/red] {escape(str(exc))}")  # brackets in it are text
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        pass


@bench_app.command("engine")
def bench_engine(
    model: ModelOpt = None,
    random_weights: RandomOpt = None,
    num_requests: Annotated[
        int | None, typer.Option(help="Offline requests (CPU: 64, GPU: 256)")
    ] = None,
    input_len: Annotated[str | None, typer.Option(help="Input length range MIN..MAX")] = None,
    output_len: Annotated[str | None, typer.Option(help="Output length range MIN..MAX")] = None,
    batch_sizes: Annotated[str | None, typer.Option(help="Decode sweep, e.g. 1,16,64")] = None,
    sweep_context: Annotated[int, typer.Option(help="Context length in the decode sweep")] = 256,
    prefill_len: Annotated[
        int | None, typer.Option(help="Prompt length for the prefill test")
    ] = None,
    skip: Annotated[
        list[str] | None,
        typer.Option(help="Skip a part: offline, sweep, prefill, speculation"),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write the JSON result here")] = None,
    seed: int = 0,
    spec_batch_sizes: Annotated[
        str, typer.Option(help="Batch sizes of the speculation part (with --speculation)")
    ] = "1,4,16,64",
    spec_max_tokens: Annotated[
        int, typer.Option(min=1, help="Output tokens per request in the speculation part")
    ] = 128,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    kv_cache_gb: KvOpt = None,
    max_model_len: LenOpt = None,
    threads: ThreadsOpt = None,
    speculation: SpeculationOpt = None,
    num_speculative_tokens: SpecTokensOpt = 4,
    draft_model: DraftModelOpt = None,
    quantization: QuantizationOpt = None,
    async_scheduling: AsyncOpt = False,
) -> None:
    """Offline throughput, a decode sweep over batch sizes, prefill speed, against the roofline;
    with --speculation, the chat and agent workloads with speculation off and on."""
    from tokenfactory.bench.engine_bench import BenchOptions, run_engine_bench
    from tokenfactory.bench.spec_bench import SpecBenchOptions, run_speculation_bench

    config = _engine_config(
        device, dtype, kv_cache_gb, max_model_len, threads, max_num_seqs=512, seed=seed,
        quantization=quantization,
        **_speculation(speculation, num_speculative_tokens, draft_model, async_scheduling),
    )
    engine = _load_engine(model, random_weights, config)
    cpu = engine.device.type == "cpu"
    opts = BenchOptions(
        num_requests=num_requests or (64 if cpu else 256),
        input_len=_range(input_len or ("100..512" if cpu else "100..1024")),
        output_len=_range(output_len or ("100..256" if cpu else "100..1024")),
        batch_sizes=[
            int(b)
            for b in (batch_sizes or ("1,4,16,64,128,256" if cpu else "1,16,64,128,256")).split(",")
        ],
        sweep_context=sweep_context,
        prefill_len=prefill_len or (512 if cpu else 2048),
        skip=set(skip or []),
        seed=seed,
    )
    spec_batches = _batches(spec_batch_sizes) or ()

    def save(partial: dict) -> None:
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(partial, indent=2))

    result = run_engine_bench(engine, opts, console=err, on_part=save)
    if config.speculation is not None and "speculation" not in opts.skip:
        spec_opts = SpecBenchOptions(batch_sizes=list(spec_batches), max_tokens=spec_max_tokens)

        def save_spec(spec: dict) -> None:
            save(result | {"speculation": spec})

        result["speculation"] = run_speculation_bench(engine, spec_opts, err, save_spec)
    save(result)
    if out:
        err.print(f"wrote {out}")


@bench_app.command("perplexity")
def bench_perplexity(
    model: ModelOpt = None,
    quantization: QuantizationOpt = None,
    max_tokens: Annotated[
        int | None, typer.Option(min=2, help="Score only the text's first N tokens")
    ] = None,
    window: Annotated[int, typer.Option(min=2, help="Tokens per scored window")] = 1024,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "bfloat16",
    threads: ThreadsOpt = None,
    smoothing: Annotated[
        bool,
        typer.Option(help="FP8: smooth the activations first, as the engine does"),
    ] = True,
    calibration_text: Annotated[
        Path | None,
        typer.Option(help="FP8: smooth on this text instead of the shipped calibration text"),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write the JSON result here")] = None,
) -> None:
    """Perplexity on the shipped English text, with the weights as loaded and, with
    --quantization, quantized: what the quantization costs in quality."""
    from tokenfactory.bench.perplexity import compare
    from tokenfactory.models.loader import load_model_files

    config = _engine_config(device, dtype, None, None, threads)
    try:
        with err.status("loading model..."):
            loaded = load_model_files(model)
        text = calibration_text.read_text("utf-8") if calibration_text is not None else None
        with err.status("scoring the text..."):
            result = compare(
                loaded, config, quantization, max_tokens, window, smoothing, text
            )
    except (ModelLoadError, ValueError, OSError) as exc:  # a bad text: ValueError
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    for run in (result.baseline, result.quantized):
        if run is not None:
            err.print(
                f"{result.model} {run.dtype} {run.quantization or 'unquantized'}: perplexity "
                f"[bold]{run.perplexity:.4f}[/bold] over {run.tokens_scored} tokens, weights "
                f"{run.weight_bytes / 2**20:.1f} MiB ({run.seconds:.1f} s)"
            )
    if result.relative_difference is not None:
        err.print(f"relative difference: {result.relative_difference:+.2%}")
    print(json.dumps(result.to_dict(), indent=2))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result.to_dict(), indent=2))
        err.print(f"wrote {out}")


@bench_app.command("structured-output")
def bench_structured_output(
    model: ModelOpt = None,
    batch_sizes: Annotated[str, typer.Option(help="Batch sizes, e.g. 1,64")] = "1,64",
    steps: Annotated[int, typer.Option(min=1, help="Decode steps timed per measurement")] = 12,
    rounds: Annotated[int, typer.Option(min=1, help="Alternated rounds of the three modes")] = 3,
    out: Annotated[Path | None, typer.Option(help="Write the JSON result here")] = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
) -> None:
    """Decode step time without a grammar and with one (masks overlapped with the forward,
    or filled after it), side by side at each batch size."""
    from tokenfactory.bench.structured_output_bench import (
        StructuredBenchOptions,
        run_structured_output_bench,
    )

    sizes = _batches(batch_sizes) or (1, 64)
    config = _engine_config(device, "auto", None, None, threads, max_num_seqs=max(sizes))
    engine = _load_engine(model, None, config)
    opts = StructuredBenchOptions(batch_sizes=list(sizes), steps=steps, rounds=rounds)
    result = run_structured_output_bench(engine, opts, err)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        err.print(f"wrote {out}")


def _batches(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        sizes = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"expected sizes like 1,4,16, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise typer.BadParameter(f"batch sizes must be >= 1, got {text!r}")
    return sizes


# Load generator: talks HTTP only; its options live with it in bench/serve/command.py.
from tokenfactory.bench.serve.command import compare_command, serve_command  # noqa: E402


@bench_app.command("http")
def bench_http(
    model: ModelOpt = None,
    requests: Annotated[int, typer.Option(help="Concurrent streams")] = 64,
    prompt_len: Annotated[int, typer.Option(help="Prompt tokens per request")] = 64,
    output_len: Annotated[int, typer.Option(help="Output tokens per request")] = 128,
    rounds: Annotated[int, typer.Option(help="Alternating engine/server rounds")] = 3,
    threads: ThreadsOpt = None,
    out: Annotated[Path | None, typer.Option(help="Write the JSON result here")] = None,
) -> None:
    """What the HTTP path costs: the same streams in-process and through `tokenfactory serve`."""
    from tokenfactory.bench.http_overhead import measure, to_json

    with err.status("engine in-process, then the server with concurrent streams..."):
        result = measure(model, requests, prompt_len, output_len, threads, rounds)
    err.print(
        f"{requests} streams x {output_len} tokens, median of {rounds} alternating rounds: "
        f"engine {result.engine_tokens_per_s:.0f} tok/s, server "
        f"{result.server_tokens_per_s:.0f} tok/s -> {result.ratio:.1%} of the engine "
        f"({result.server_errors} errors)\n  engine rounds: "
        + ", ".join(f"{x:.0f}" for x in result.engine_tokens_per_s_each)
        + "\n  server rounds: "
        + ", ".join(f"{x:.0f}" for x in result.server_tokens_per_s_each)
    )
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(to_json(result))
        err.print(f"wrote {out}")


@bench_app.command("policies")
def bench_policies(
    policies: Annotated[str, typer.Option(help="Policies to compare")] = "fcfs,priority,tier",
    sweep: Annotated[str, typer.Option(help="fcfs rates (req/s) to find 100% load")] = (
        "0.5,1,2,4"
    ),
    levels: Annotated[str, typer.Option(help="Load levels, as shares of 100%")] = (
        "0.5,1,1.5,2"
    ),
    duration: Annotated[float, typer.Option(help="Seconds of arrivals per point")] = 60.0,
    input_len: Annotated[str, typer.Option(help="Prompt lengths")] = "lognormal:160,0.6",
    output_len: Annotated[str, typer.Option(help="Output lengths")] = "lognormal:48,0.5",
    seeds: Annotated[
        str,
        typer.Option(
            help="Arrival seeds: each point runs once per seed, pooled (more requests per "
            "tier; that many times the run time)"
        ),
    ] = "0",
    out_dir: Annotated[Path, typer.Option(help="Reports go here")] = Path(
        "bench-results/policies"
    ),
    simulate: Annotated[
        bool, typer.Option(help="Simulated engine (no model, no HTTP): a preview in seconds")
    ] = False,
    step_cost: Annotated[
        str | None,
        typer.Option(
            help="With --simulate: step seconds BASE,PER_DECODE,PER_PREFILL,PER_KV"
            "[,PREFILL_STEP] (the last: fixed cost of a step that computes prompt tokens), "
            "or a name from data/step_costs.toml (e.g. h200-llama-8b)"
        ),
    ] = None,
    step_prior: Annotated[
        str | None,
        typer.Option(
            help="With --simulate: what the hardware probe tells the policies before any "
            "step, as --step-cost (e.g. h200-llama-8b-probe)"
        ),
    ] = None,
    preset: Annotated[
        str,
        typer.Option(help="With --simulate: the tiers file's preset whose promises apply"),
    ] = "cpu",
    mix: Annotated[
        str, typer.Option(help="Tier mix of the load, TIER=WEIGHT,... (the open tiers)")
    ] = "free=0.4,standard=0.3,high=0.2,ultra=0.08,super=0.02",
    max_num_seqs: Annotated[
        int, typer.Option(help="With --simulate: the engine's sequence slots", min=1)
    ] = 64,
    num_kv_blocks: Annotated[
        int, typer.Option(help="With --simulate: KV blocks of 16 tokens", min=1)
    ] = 4096,
    early_stop_share: Annotated[
        float,
        typer.Option(
            help="With --simulate: share of requests that stop by themselves before their "
            "max_tokens, at a uniform point (0-1)",
            min=0.0,
            max=1.0,
        ),
    ] = 0.0,
    ignore_eos: Annotated[
        bool,
        typer.Option(
            help="Every request runs to its max_tokens: the same output tokens under every "
            "policy, so revenue differs only by the tiers delivered"
        ),
    ] = False,
    tiers: Annotated[
        Path | None,
        typer.Option(help="Tiers TOML file (default: shipped); its cpu preset's promises"),
    ] = None,
    serve_args: Annotated[
        str,
        typer.Option(
            help="More `tokenfactory serve` options for every server started, e.g. "
            "'--replicas 2 --threads 1' (a fleet; a [pools] table in --tiers binds tiers)"
        ),
    ] = "",
    step_logs: Annotated[
        bool,
        typer.Option(
            help="Each point's server logs its steps to OUT_DIR/POINT.steps.jsonl, for "
            "`tokenfactory plan calibrate --step-log`"
        ),
    ] = False,
) -> None:
    """fcfs vs priority vs tier on the same tiered load, at 50-200% of fcfs's capacity."""
    from tokenfactory.bench.policy_compare import (
        PolicyBenchOptions,
        markdown,
        plot_speeds,
        run,
        run_simulated,
    )

    opts = PolicyBenchOptions(
        policies=_policies(policies),
        sweep_rates=_positive_list(sweep, "--sweep"),
        load_levels=_positive_list(levels, "--levels"),
        duration_s=duration,
        input_len=input_len,
        output_len=output_len,
        seeds=_seed_list(seeds),
        early_stop_share=early_stop_share,
        ignore_eos=ignore_eos,
        out_dir=out_dir,
        tiers_file=tiers,
        mix=mix,
        preset=preset,
        max_num_seqs=max_num_seqs,
        num_kv_blocks=num_kv_blocks,
        extra_serve_args=_serve_args(serve_args),
        step_log_dir=out_dir if step_logs else None,
    )
    from tokenfactory.bench.serve.tiers_info import parse_mix
    from tokenfactory.tiers import TierError, load_tiers

    try:
        catalog = load_tiers(tiers, preset=preset)  # fail before any server starts
    except TierError as exc:
        hint = "--tiers" if tiers is not None else "--preset"
        raise typer.BadParameter(str(exc), param_hint=hint) from None
    try:
        unknown = [t for t in parse_mix(mix) if t not in catalog.names]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--mix") from None
    if unknown:
        raise typer.BadParameter(f"unknown tier {unknown[0]!r}", param_hint="--mix")
    if simulate:
        if ignore_eos and early_stop_share:
            raise typer.BadParameter(
                "--ignore-eos means no request stops early; drop --early-stop-share",
                param_hint="--ignore-eos",
            )
        if serve_args or step_logs:
            raise typer.BadParameter(
                "starts no server with --simulate",
                param_hint="--step-logs" if step_logs else "--serve-args",
            )
        result = run_simulated(
            opts, _step_cost(step_cost), log=err.print, step_prior=_step_cost(step_prior)
        )
        print(markdown(result))
        return
    simulated_only = {
        "--step-cost": step_cost is not None,
        "--step-prior": step_prior is not None,
        "--preset": preset != "cpu",
        "--max-num-seqs": max_num_seqs != 64,
        "--num-kv-blocks": num_kv_blocks != 4096,
    }
    for option, given in simulated_only.items():
        if given:
            raise typer.BadParameter(f"{option} applies only with --simulate")
    if early_stop_share:
        raise typer.BadParameter("--early-stop-share applies only with --simulate")
    result = run(opts, log=err.print)
    print(markdown(result))
    for level in opts.load_levels:
        if level >= 1.5:  # the overloaded levels, where the policies differ
            path = out_dir / f"speeds-{int(level * 100)}.png"
            plot_speeds(out_dir, level, opts.policies, path)
            err.print(f"wrote {path}")


bench_app.command("serve")(serve_command)
bench_app.command("compare")(compare_command)

# The agent runner: talks HTTP only; its options live with it in agent/command.py.
from tokenfactory.agent.command import agent_app  # noqa: E402

app.add_typer(agent_app, name="agent")

# The planner (the `plan` extra): its commands live with it in planner/cli.py.
from tokenfactory.planner.cli import plan_app  # noqa: E402

app.add_typer(plan_app, name="plan")


def _serve_args(text: str) -> list[str]:
    """`--serve-args` as a list; the options a benchmark sets itself are refused."""
    import shlex

    try:
        args = shlex.split(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--serve-args") from None
    owned = {"--policy", "--port", "--data-dir", "--tiers", "--step-log"}
    taken = [a for a in args if a.split("=", 1)[0] in owned]
    if taken:
        raise typer.BadParameter(
            f"{taken[0]} is set by the benchmark (use --policies, --tiers or --step-logs)",
            param_hint="--serve-args",
        )
    return args


def _seed_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        values = ()
    if not values or any(v < 0 for v in values) or len(set(values)) != len(values):
        raise typer.BadParameter(
            f"--seeds expects distinct whole numbers >= 0 separated by commas, got {text!r}"
        )
    return values


def _positive_list(text: str, option: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(0 < v < float("inf") for v in values):
        raise typer.BadParameter(f"{option} expects numbers > 0 separated by commas, got {text!r}")
    return values


def _policies(text: str) -> tuple[str, ...]:
    from tokenfactory.scheduling.policy import known_policies

    names = tuple(x.strip() for x in text.split(","))
    unknown = [n for n in names if n not in known_policies()]
    if unknown:
        known = ", ".join(known_policies())
        raise typer.BadParameter(f"unknown policy {unknown[0]!r} in --policies; known: {known}")
    return names


def _step_cost(text: str | None):
    from tokenfactory.scheduling.calibration import calibrations, step_cost
    from tokenfactory.scheduling.step_model import StepCoefficients

    if text is None:
        return None
    if text in calibrations():
        return step_cost(text)
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (4, 5) or any(not v >= 0 for v in values) or values[0] <= 0:
        raise typer.BadParameter(
            "expected BASE,PER_DECODE,PER_PREFILL,PER_KV[,PREFILL_STEP] seconds (BASE > 0) "
            f"or one of {', '.join(calibrations())}, got {text!r}"
        )
    return StepCoefficients(*values)


def _range(text: str) -> tuple[int, int]:
    try:
        lo, _, hi = text.partition("..")
        a, b = int(lo), int(hi or lo)
    except ValueError:
        raise typer.BadParameter(f"expected MIN..MAX, got {text!r}") from None
    if not 1 <= a <= b:
        raise typer.BadParameter(f"expected 1 <= MIN <= MAX, got {text!r}")
    return a, b


def main() -> None:
    app()


if __name__ == "__main__":
    main()
