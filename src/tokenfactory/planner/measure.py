"""`tokenfactory plan measure`: the short engine sweep on this machine, fitted, written as the
calibration `--hardware local` reads. (Loads the engine: torch is imported here only.)"""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from tokenfactory.planner.calibrate import fit_report
from tokenfactory.planner.hardware import (
    LOCAL,
    Hardware,
    default_calibration_path,
    presets,
    write_local,
)
from tokenfactory.planner.measurements import decode_sample, prefill_sample
from tokenfactory.planner.perf_model import Peak, Sample
from tokenfactory.planner.shapes import architecture_name, shape_of

NOISY = 0.15  # a held-out error past which the measurement, not the model, is suspect


def measure_here(
    random_weights: str | None,
    device: str,
    batches: list[int],
    contexts: list[int],
    rounds: int,
    power_w: float | None,
    out_path: Path | None,
    threads: int | None,
    console: Console,
) -> Path:
    from tokenfactory.bench.engine_bench import BenchOptions, run_engine_bench
    from tokenfactory.engine.config import EngineConfig
    from tokenfactory.engine.engine import Engine

    config = EngineConfig(device=device, num_threads=threads, max_num_seqs=max(batches))
    if random_weights:
        engine = Engine.from_random_weights(random_weights, config)
    else:
        engine = Engine.from_model_path(None, config)
    # Each (batch, context) keeps its fastest median over the rounds: on a shared machine a
    # round can catch someone else's work.
    best: dict[tuple[int, int], tuple[float, float]] = {}
    roofs = []
    prefill: tuple[int, float] | None = None  # prompt tokens, fastest seconds
    for r in range(rounds):
        for i, ctx in enumerate(contexts):
            # One prompt's prefill per round pins the arithmetic rate.
            skip = {"offline"} | ({"prefill"} if i else set())
            # Prompts of a round differ from every other round's: the prefix cache would
            # otherwise serve a repeated prefill.
            opts = BenchOptions(
                batch_sizes=batches, sweep_context=ctx, skip=skip, seed=1000 * r + 100 * i
            )
            result = run_engine_bench(engine, opts, console)
            roofs.append(result["roofline"])
            pre = result.get("prefill")
            if pre and (prefill is None or pre["time_ms"] / 1e3 < prefill[1]):
                prefill = (pre["prompt_tokens"], pre["time_ms"] / 1e3)
            for row in result.get("decode_sweep", []):
                if "skipped" in row:
                    continue
                key = (row["batch"], ctx)
                if key not in best or row["step_ms"] < best[key][0]:
                    best[key] = (row["step_ms"], row["context"])
    samples: list[Sample] = [
        decode_sample(b, seen_ctx, ms / 1e3) for (b, _), (ms, seen_ctx) in sorted(best.items())
    ]
    if prefill is not None:
        samples.append(prefill_sample(*prefill))
    # The machine's peaks: the best roofline any round measured.
    bandwidth = max(r["copy_bandwidth_gbs"] for r in roofs)
    tflops = max(r["matmul_tflops"] for r in roofs)
    cpu = engine.device.type == "cpu"
    base = presets()["cpu" if cpu else "h200"]
    shape = shape_of(engine.model_config)
    peak = Peak(bandwidth * 1e9, tflops * 1e12)
    report = fit_report(shape, peak, samples, base.params, "batch")
    by_context = (
        fit_report(shape, peak, samples, base.params, "context") if len(contexts) > 1 else None
    )
    from tokenfactory.bench.engine_bench import machine_description

    machine = machine_description(engine)
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9 if cpu else 0.0
    if not cpu:
        import torch

        mem = torch.cuda.get_device_properties(engine.device).total_memory / 1e9
    hw = Hardware(
        name=LOCAL,
        description=f"{machine}, measured by `tokenfactory plan measure`",
        tier_preset="cpu" if cpu else "gpu",
        memory_bandwidth_gbs=bandwidth,
        bf16_tflops=tflops,
        fp8_tflops=tflops,
        memory_gb=mem,
        power_w=power_w if power_w is not None else base.power_w,
        params=replace(report.params),
        sources=(
            f"copy bandwidth and matmul rate measured on {machine}, "
            f"{datetime.now(UTC).isoformat(timespec='seconds')}",
            "power: given" if power_w is not None else f"power: the {base.name} preset's",
        ),
    )
    path = out_path or default_calibration_path()
    write_local(hw, path, {
        "model": engine.model_name,
        "shape": architecture_name(engine.model_config),
        "samples": [
            {"label": s.label, "batch": s.work.seqs, "context": s.work.context,
             "step_ms": s.step_s * 1e3}
            for s in samples
        ],
        "held_out_median_abs_error": report.median_abs_held_out,
        "held_out": [
            {"label": h.label, "measured_ms": h.measured_s * 1e3,
             "predicted_ms": h.predicted_s * 1e3}
            for h in report.held_out
        ],
        "held_out_by_context_median_abs_error": (
            None if by_context is None else by_context.median_abs_held_out
        ),
        "held_out_by_context": [] if by_context is None else [
            {"label": h.label, "measured_ms": h.measured_s * 1e3,
             "predicted_ms": h.predicted_s * 1e3}
            for h in by_context.held_out
        ],
    })
    for name, rep in (("batch", report), ("context", by_context)):
        if rep is None:
            continue
        console.print(f"each {name} held out in turn (predicted by a fit on the others):")
        for h in rep.held_out:
            console.print(
                f"  {h.label}: measured {h.measured_s * 1e3:.2f} ms, predicted "
                f"{h.predicted_s * 1e3:.2f} ms ({h.error:+.1%})"
            )
        console.print(f"  median absolute error {rep.median_abs_held_out:.1%}")
    console.print(
        f"fitted: memory {hw.params.memory_efficiency:.0%} and compute "
        f"{hw.params.compute_efficiency:.0%} of the measured peaks, {hw.params.base_s * 1e3:.1f} "
        f"ms a step + {hw.params.per_seq_s * 1e3:.2f} ms a sequence; held-out median error "
        f"{report.median_abs_held_out:.1%}"
    )
    if report.median_abs_held_out > NOISY:
        console.print(
            f"[yellow]warning:[/yellow] steps held out are off by {report.median_abs_held_out:.0%} "
            "(median): the steps were not steady, likely other work on this machine. Measure "
            "again when it is quiet, or with more --rounds (each batch keeps its fastest)."
        )
    return path
