"""The `tokenfactory bench serve` and `bench compare` commands (registered in cli.py)."""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console

from tokenfactory.bench.serve.arrivals import parse_rates
from tokenfactory.bench.serve.console import print_tier_speculation
from tokenfactory.bench.serve.metrics import Slo
from tokenfactory.bench.serve.runner import (
    EndpointError,
    LoadPoint,
    Runner,
    RunOptions,
    RunResult,
    api_url,
    run_point,
)
from tokenfactory.bench.serve.tasks import fetch_ledger_costs
from tokenfactory.bench.serve.tiers_info import (
    KeyRing,
    apply_overrides,
    fetch_catalog,
    fetch_tier_speculation,
    is_loopback,
    parse_mix,
)
from tokenfactory.bench.serve.workloads import WorkloadOptions
from tokenfactory.tiers import TierError

err = Console(stderr=True)
Opt = typer.Option


def _stdout() -> Console:
    """Tables on stdout; wide when piped (rich would fold them to 80 columns)."""
    c = Console()
    return c if c.is_terminal else Console(width=200)


def _concurrencies(text: str | None) -> list[int | None]:
    if not text:
        return [None]
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"--max-concurrency: expected N or N,N,… got {text!r}") from None
    if not values or min(values) < 1:
        raise typer.BadParameter("--max-concurrency values must be >= 1")
    return list(values)


def _model(client: httpx.Client, api: str, model: str | None, headers: dict) -> str:
    if model:
        return model
    try:
        resp = client.get(f"{api}/models", headers=headers)
        resp.raise_for_status()
        return str(resp.json()["data"][0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
        err.print(f"[red]error:[/red] cannot read {api}/models ({exc}); pass --model")
        raise typer.Exit(2) from None


def _ledger_task_costs(runner: Runner, result: RunResult) -> dict[str, int] | None:
    """What the endpoint's ledger billed each task of the run (None: it cannot say)."""
    task_ids = {r.task_id for r in result.records if r.task_id is not None}
    if not task_ids:
        return None
    keys = {runner.keys.key_for(r.tier, runner.catalog) for r in result.records}
    with httpx.Client(timeout=30.0) as client:
        return fetch_ledger_costs(client, runner.opts.api_url, keys, task_ids)


def serve_command(
    base_url: Annotated[str, Opt(help="Endpoint root (…/v1 accepted)")] = "http://127.0.0.1:8000",
    endpoint: Annotated[str, Opt(help="chat (/v1/chat/completions) or completions")] = "chat",
    model: Annotated[str | None, Opt(help="Model name (default: first of /v1/models)")] = None,
    api_key: Annotated[str | None, Opt(help="Bearer key (default: $OPENAI_API_KEY)")] = None,
    tier_keys: Annotated[
        str | None, Opt(help="JSON file {tier: key}; loopback default: the factory's local keys")
    ] = None,
    workload: Annotated[str, Opt(help="random, chat, agent or trace")] = "random",
    input_len: Annotated[
        str | None, Opt(help="Prompt tokens: N, MIN..MAX or lognormal:MEAN,SIGMA")
    ] = None,
    output_len: Annotated[str | None, Opt(help="max_tokens: same forms as --input-len")] = None,
    num_prompts: Annotated[int, Opt(help="Requests per load point")] = 100,
    duration: Annotated[
        float | None, Opt(help="Stop sending new requests after this many seconds")
    ] = None,
    request_rate: Annotated[str, Opt(help="Requests (sessions) per second, or a sweep 1,2,4")] = (
        "inf"
    ),
    burstiness: Annotated[float, Opt(help="Gamma shape: 1 = Poisson, <1 burstier")] = 1.0,
    max_concurrency: Annotated[
        str | None, Opt(help="Requests in flight at most, or a sweep 1,8,32")
    ] = None,
    tier_mix: Annotated[
        str | None, Opt(help="Shares per tier, e.g. free=0.5,standard=0.3,super=0.2")
    ] = None,
    tier_target: Annotated[
        list[str] | None, Opt(help="NAME=TOKENS_PER_S:TTFT_S (repeatable)")
    ] = None,
    tier_price: Annotated[
        list[str] | None, Opt(help="NAME=INPUT:CACHED:OUTPUT USD per Mtok (repeatable)")
    ] = None,
    tier_preset: Annotated[
        str, Opt(help="tiers.toml preset when the endpoint has no /v1/tiers")
    ] = "gpu",
    tiers_file: Annotated[str | None, Opt(help="Tiers TOML instead of the shipped one")] = None,
    goodput: Annotated[
        list[str] | None, Opt(help="SLOs in ms instead of tier promises: ttft:500 tpot:50")
    ] = None,
    max_context: Annotated[
        int | None, Opt(help="Shorten requests so prompt + output fit (e.g. 2048)")
    ] = None,
    tokenizer: Annotated[
        str | None, Opt(help="GGUF file or HF dir: size prompts exactly in its tokens")
    ] = None,
    agent_system_tokens: Annotated[int, Opt(help="Agent: shared system prefix")] = 600,
    agent_user_tokens: Annotated[int, Opt(help="Agent: user message per turn")] = 40,
    agent_tool_result_tokens: Annotated[int, Opt(help="Agent: each tool result")] = 100,
    agent_turns: Annotated[int, Opt(help="Agent: user turns per session")] = 2,
    agent_steps: Annotated[int, Opt(help="Agent: model calls per turn")] = 3,
    agent_tool_latency: Annotated[float, Opt(help="Agent: mean tool latency, s")] = 0.3,
    agent_think_time: Annotated[float, Opt(help="Agent: mean human think time, s")] = 2.0,
    prompt_cache_key: Annotated[
        bool, Opt("--prompt-cache-key/--no-prompt-cache-key", help="Agent: send one per session")
    ] = True,
    trace: Annotated[str | None, Opt(help="Mooncake JSONL, or 'sample'")] = None,
    trace_speed: Annotated[float, Opt(help="Replay speed-up of trace timestamps")] = 1.0,
    temperature: Annotated[float | None, Opt(help="Sampling temperature")] = None,
    ignore_eos: Annotated[bool, Opt(help="Send ignore_eos (vLLM, tokenfactory)")] = False,
    extra_body: Annotated[str | None, Opt(help="JSON merged into every request body")] = None,
    timeout: Annotated[float, Opt(help="Per-request timeout, s")] = 600.0,
    seed: int = 0,
    out: Annotated[Path | None, Opt(help="JSON report path")] = None,
    html: Annotated[bool, Opt("--html/--no-html", help="Write an HTML report beside it")] = True,
    save_itl: Annotated[bool, Opt(help="Keep every inter-token gap in the JSON")] = False,
    progress: Annotated[bool, Opt("--progress/--no-progress")] = True,
    warmup: Annotated[bool, Opt("--warmup/--no-warmup", help="One uncounted request first")] = (
        True
    ),
) -> None:
    """Load an OpenAI-compatible endpoint; report latency, speed per tier, goodput, revenue."""
    from tokenfactory.bench.serve.console import print_summary, print_task_summary
    from tokenfactory.bench.serve.html import write_html
    from tokenfactory.bench.serve.report import build_report, write_json

    if endpoint not in ("chat", "completions"):
        raise typer.BadParameter("--endpoint must be chat or completions")
    if workload == "trace" and not trace:
        trace = "sample"
    try:
        rates = parse_rates(request_rate)
        concs = _concurrencies(max_concurrency)
        mix = parse_mix(tier_mix)
        slo = Slo.parse(goodput)
        keys = KeyRing.build(api_key, tier_keys, base_url)
        extra = json.loads(extra_body) if extra_body else {}
    except (ValueError, json.JSONDecodeError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if not is_loopback(base_url):
        err.print(f"[yellow]note:[/yellow] loading a non-loopback endpoint: {base_url}")
    api = api_url(base_url)
    with httpx.Client(timeout=10.0) as client:
        try:
            closed: dict[str, str] = {}
            catalog = fetch_catalog(client, base_url, tier_preset, tiers_file, closed)
            catalog = apply_overrides(catalog, tier_target or [], tier_price or [])
        except (TierError, ValueError) as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
        key = keys.key_for(None, catalog)
        model = _model(client, api, model, {"Authorization": f"Bearer {key}"} if key else {})
    for name, reason in closed.items():
        if name in mix:
            err.print(f"[yellow]note:[/yellow] the endpoint says tier {name} is closed: {reason}")
    unknown = [t for t in mix if t not in catalog]
    if unknown:
        err.print(f"[yellow]note:[/yellow] tiers {unknown} have no promise or price here")
    encode = None
    if tokenizer:
        from tokenfactory.bench.serve.text import load_tokenizer

        encode = load_tokenizer(tokenizer)
    wl = WorkloadOptions(
        name=workload,
        input_len=input_len,
        output_len=output_len,
        seed=seed,
        max_context=max_context,
        tier_mix=mix,
        encode=encode,
        agent_system_tokens=agent_system_tokens,
        agent_user_tokens=agent_user_tokens,
        agent_tool_result_tokens=agent_tool_result_tokens,
        agent_turns=agent_turns,
        agent_steps=agent_steps,
        agent_tool_latency_s=agent_tool_latency,
        agent_think_time_s=agent_think_time,
        prompt_cache_key=prompt_cache_key,
        # one task id per agent session, unique to this run so the ledger's sums are its own
        task_prefix=(
            f"bench-{datetime.now(UTC).strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}-"
            if workload == "agent" else None
        ),
        trace=trace,
        trace_speed=trace_speed,
    )
    opts = RunOptions(
        api_url=api,
        model=model,
        endpoint=endpoint,
        num_prompts=num_prompts,
        duration_s=duration,
        burstiness=burstiness,
        timeout_s=timeout,
        temperature=temperature,
        ignore_eos=ignore_eos,
        extra_body=extra,
        seed=seed,
        progress=progress,
        warmup=warmup,
    )
    err.print(
        f"[bold]{model}[/bold] at {api}; tiers from {catalog.source}; keys: {keys.source}; "
        f"workload {workload}"
    )
    runner = Runner(opts, wl, catalog, keys, err)
    results = []
    try:
        for rate in rates:
            for conc in concs:
                result = run_point(runner, LoadPoint(rate, conc))
                result.ledger_task_costs = _ledger_task_costs(runner, result)
                results.append(result)
    except EndpointError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    config = {
        "workload": workload,
        "endpoint": endpoint,
        "input_len": input_len,
        "output_len": output_len,
        "num_prompts": num_prompts,
        "duration_s": duration,
        "request_rates": [None if math.isinf(r) else r for r in rates],
        "max_concurrency": concs,
        "burstiness": burstiness,
        "tier_mix": mix,
        "tier_targets": tier_target or [],
        "tier_prices": tier_price or [],
        "goodput_slo_ms": None if slo is None else vars(slo),
        "max_context": max_context,
        "tokenizer": tokenizer,
        "temperature": temperature,
        "ignore_eos": ignore_eos,
        "seed": seed,
        "trace": trace,
        "trace_speed": trace_speed,
        "agent": {
            "system_tokens": agent_system_tokens,
            "user_tokens": agent_user_tokens,
            "tool_result_tokens": agent_tool_result_tokens,
            "turns": agent_turns,
            "steps": agent_steps,
            "tool_latency_s": agent_tool_latency,
            "think_time_s": agent_think_time,
            "prompt_cache_key": prompt_cache_key,
        },
    }
    endpoint_doc = {"base_url": base_url, "api_url": api, "model": model, "keys": keys.source}
    doc = build_report(config, endpoint_doc, catalog, results, slo, save_itl)
    # Per-request acceptance is not in the OpenAI response: report the endpoint's own
    # per-tier figures as they stand at the end of the run.
    with httpx.Client(timeout=10.0) as client:
        speculation = fetch_tier_speculation(client, base_url)
    doc["tier_speculation"] = (
        None if speculation is None else {k: v and asdict(v) for k, v in speculation.items()}
    )
    print_summary(doc, _stdout())
    print_task_summary(doc, _stdout())
    print_tier_speculation(speculation, err)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path = out or Path("bench-results") / f"serve-{workload}-{stamp}.json"
    write_json(doc, path)
    err.print(f"wrote {path}")
    if html:
        html_path = path.with_suffix(".html")
        write_html(doc, html_path)
        err.print(f"wrote {html_path}")


def compare_command(
    a: Annotated[Path, typer.Argument(help="Baseline report (JSON)")],
    b: Annotated[Path, typer.Argument(help="Report to compare against it")],
) -> None:
    """Print two `bench serve` reports side by side with B/A ratios."""
    from tokenfactory.bench.serve.console import compare_reports, print_compare
    from tokenfactory.bench.serve.report import load_report

    try:
        da, db = load_report(a), load_report(b)
    except (OSError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    print_compare(compare_reports(da, db), (a.name, b.name), _stdout())
