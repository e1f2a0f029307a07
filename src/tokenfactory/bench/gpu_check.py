"""One-shot GPU check: correctness of the CUDA path, then the engine benchmark, as JSON.

    python -m tokenfactory.bench.gpu_check --out DIR [--budget-s 450] [--model PATH]

(`tools/gpu_check.sh` wraps it for the device machine.) Steps, each recorded in
DIR/gpu_check.json as it finishes, so a run cut short still leaves what it measured:

1. environment: GPU, torch, Triton, free memory;
2. correctness on a random small config, and on the embedded model (or --model) where its
   file is present: the CUDA engine's bf16 logits at every generated position against the
   CPU float32 reference (teacher-forced over the GPU's tokens); greedy tokens of one request
   alone vs inside a batch of 64; prefix cache on vs off; CUDA graphs vs eager;
3. `bench engine` on llama-3.1-8b random weights: decode sweep (batch 1, 16, 64, 128, 256 at
   context ~1k), prefill of 2k-token prompts, offline 256 requests with input and output
   uniform in 100..1024 (DIR/engine-cuda.json; a subprocess with what is left of the budget,
   less about 100 s);
4. the GPU test files (pytest tests/gpu) in a subprocess, with the time left.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.engine import Engine, build_model
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.models.config import ModelConfig

SMALL = ModelConfig(
    architecture="llama",
    vocab_size=4096,
    hidden_size=512,
    intermediate_size=1408,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=4096,
    name="small-random",
)

REPO = Path(__file__).resolve().parents[3]


class LogitRecorder:
    """Wraps an engine's sampler and keeps each request's logits per generated token."""

    def __init__(self, engine: Engine):
        self.inner = engine.sampler
        self.rows: dict[str, list[torch.Tensor]] = {}
        engine.sampler = self  # type: ignore[assignment]

    def launch(self, logits: torch.Tensor, seqs: list, grammar_masks: Any = None) -> Any:
        cpu = logits.detach().to("cpu", torch.float32, copy=True)  # graph buffers get reused
        for i, seq in enumerate(seqs):
            self.rows.setdefault(seq.request_id, []).append(cpu[i])
        return self.inner.launch(logits, seqs, grammar_masks)


# A dry run on CPU (tests) swaps these for the torch backend over the same static buffers.
ENGINE_DEFAULTS: dict[str, Any] = {"device": "cuda", "dtype": "bfloat16"}


def _engine(model_config: ModelConfig, state_dict=None, std: float | None = None, **cfg) -> Engine:
    base = dict(ENGINE_DEFAULTS, max_model_len=2048, max_num_seqs=128, seed=0)
    base.update(cfg)
    config = EngineConfig(**base)
    model = build_model(model_config, config, state_dict=state_dict)
    if std is not None:
        model.init_random_weights(seed=1, std=std)
    return Engine(model, None, config, model_name=model_config.name)


def _free() -> None:
    """Release an engine's KV cache and graph pool (runner and graph runner form a cycle)."""
    gc.collect()
    torch.cuda.empty_cache()


def _reference_model(model_config: ModelConfig, gpu_engine: Engine):
    """The same weights on CPU in float32."""
    config = EngineConfig(device="cpu", dtype="float32", max_model_len=2048)
    ref = build_model(model_config, config, state_dict=None)
    src = gpu_engine.model.state_dict()
    with torch.no_grad():
        for name, p in ref.state_dict().items():
            p.copy_(src[name].float().cpu())
    return ref


def _prompts(n: int, vocab: int, seed: int, lo: int = 20, hi: int = 300) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, vocab) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def check_logits(
    model_config: ModelConfig,
    engine: Engine,
    prompts: list[list[int]],
    max_tokens: int = 16,
) -> dict[str, Any]:
    """GPU bf16 logits (prefill, then graph decodes, in a batch) vs CPU float32 reference."""
    rec = LogitRecorder(engine)
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    results = engine.generate(prompts, params)
    engine.sampler = rec.inner
    ref_model = _reference_model(model_config, engine)
    worst_rel = 0.0
    mean_rel: list[float] = []
    agree = total = confident = confident_agree = 0
    for res, prompt in zip(results, prompts, strict=True):
        gpu = torch.stack(rec.rows[res.request_id])  # [max_tokens, vocab]
        full = torch.tensor(prompt + res.token_ids[:-1])
        ref = ref_model.forward_dense(full)[len(prompt) - 1 :]  # logits at sampled positions
        scale = ref.std(dim=-1, keepdim=True)
        rel = ((gpu - ref).abs() / scale).amax(dim=-1)
        worst_rel = max(worst_rel, float(rel.max()))
        mean_rel.append(float(((gpu - ref).abs() / scale).mean()))
        top2 = ref.topk(2, dim=-1).values
        margin = (top2[:, 0] - top2[:, 1]) / scale.squeeze(-1)
        same = gpu.argmax(-1) == ref.argmax(-1)
        agree += int(same.sum())
        total += same.numel()
        sure = margin > 0.05
        confident += int(sure.sum())
        confident_agree += int((same & sure).sum())
    mean = sum(mean_rel) / len(mean_rel)
    return {
        "positions": total,
        "max_abs_err_over_logit_std": worst_rel,
        "mean_abs_err_over_logit_std": mean,
        "argmax_agreement": agree / total,
        "argmax_agreement_where_margin_over_0.05_std": confident_agree / max(confident, 1),
        # bf16 weights and activations through a few layers: a few percent of the logit spread.
        "ok": mean < 0.05 and confident_agree == confident,
    }


def check_batch_invariance(engine: Engine, vocab: int, batch: int = 64) -> dict[str, Any]:
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    probe = _prompts(1, vocab, seed=11)[0]
    alone = engine.generate([probe], params)[0].token_ids
    others = _prompts(batch - 1, vocab, seed=12)
    together = engine.generate([probe, *others], params)[0].token_ids
    return {"batch": batch, "identical": alone == together, "alone": alone, "in_batch": together}


def check_prefix_cache(model_config: ModelConfig, std: float | None, state=None) -> dict:
    shared = _prompts(1, model_config.vocab_size, seed=21, lo=200, hi=200)[0]
    tails = _prompts(8, model_config.vocab_size, seed=22, lo=1, hi=40)
    batch = [shared + t for t in tails]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    out = {}
    for on in (True, False):
        engine = _engine(model_config, state, std, enable_prefix_caching=on)
        engine.generate([shared + [5]], params)  # warm the cache with the shared prefix
        res = engine.generate(batch, params)
        out[on] = ([r.token_ids for r in res], sum(r.cached_tokens for r in res))
        del engine
        _free()
    return {
        "identical": out[True][0] == out[False][0],
        "cached_tokens_with_cache": out[True][1],
        "cached_tokens_without": out[False][1],
    }


def check_graphs_vs_eager(model_config: ModelConfig, std: float | None, state=None) -> dict:
    prompts = _prompts(24, model_config.vocab_size, seed=31)
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=0)
    runs = {}
    for graphs in (True, False):
        engine = _engine(model_config, state, std, cuda_graphs=graphs)
        res = engine.generate(prompts, params)
        captured = engine.runner.graphs is not None and bool(engine.runner.graphs.graphs)
        runs[graphs] = (res, captured)
        del engine
        _free()
    (g, captured), (e, _) = runs[True], runs[False]
    same = [a.token_ids == b.token_ids for a, b in zip(g, e, strict=True)]
    diffs = [
        abs(x.logprob - y.logprob)
        for a, b in zip(g, e, strict=True)
        if a.token_ids == b.token_ids
        for x, y in zip(a.logprobs, b.logprobs, strict=True)
    ]
    return {
        "graphs_captured": captured,
        "identical_requests": sum(same),
        "requests": len(same),
        "max_logprob_diff": max(diffs, default=0.0),
    }


def correctness(
    model_config: ModelConfig, std: float | None, state=None, batch: int = 64
) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model_config.name}
    engine = _engine(model_config, state, std)
    runner = engine.runner
    out["path"] = {
        "backend": runner.backend,
        "graph_buckets": sorted(runner.graphs.graphs) if runner.graphs else [],
        "kv_cache_tokens": engine.num_kv_blocks * engine.config.block_size,
    }
    prompts = _prompts(8, model_config.vocab_size, seed=1)
    out["logits_vs_cpu_fp32"] = check_logits(model_config, engine, prompts)
    out["batch_invariance"] = check_batch_invariance(engine, model_config.vocab_size, batch)
    del engine
    _free()
    out["prefix_cache"] = check_prefix_cache(model_config, std, state)
    out["graphs_vs_eager"] = check_graphs_vs_eager(model_config, std, state)
    return out


def environment() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info()
        info.update(
            gpu=props.name,
            sms=props.multi_processor_count,
            memory_gib=total / 2**30,
            free_gib=free / 2**30,
        )
    return info


def run_pytest(out_dir: Path, timeout: int) -> dict[str, Any]:
    log = out_dir / "pytest_gpu.log"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/gpu"]
    started = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
        )
        log.write_text(proc.stdout + proc.stderr)
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        return {"rc": proc.returncode, "summary": tail, "seconds": time.monotonic() - started}
    except subprocess.TimeoutExpired as e:
        log.write_text(str(e.stdout or "") + str(e.stderr or ""))
        return {"rc": None, "summary": [f"timed out after {timeout} s"]}


def bench_main(out: Path, model: str, sweep_context: int, parts: list[str]) -> None:
    """`tokenfactory bench engine --device cuda --random-weights MODEL` with partial JSON."""
    from rich.console import Console

    from tokenfactory.bench.engine_bench import BenchOptions, run_engine_bench

    config = EngineConfig(device="cuda", dtype="auto", max_num_seqs=512, seed=0)
    engine = Engine.from_random_weights(model, config)
    opts = BenchOptions(
        num_requests=256,
        input_len=(100, 1024),
        output_len=(100, 1024),
        batch_sizes=[1, 16, 64, 128, 256],
        sweep_context=sweep_context,
        prefill_len=2048,
        skip={"sweep", "prefill", "offline"} - set(parts),
        seed=0,
    )

    def write(result: dict[str, Any]) -> None:
        result["command"] = (
            "tokenfactory bench engine --device cuda --random-weights "
            f"{model} --sweep-context {sweep_context}"
        )
        out.write_text(json.dumps(result, indent=2))

    run_engine_bench(engine, opts, Console(stderr=True), on_part=write)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-check-out")))
    ap.add_argument("--budget-s", type=float, default=450.0, help="whole run, in seconds")
    ap.add_argument("--model", default=None, help="GGUF/HF model for the real-weights check")
    ap.add_argument("--bench-model", default="llama-3.1-8b")
    ap.add_argument("--sweep-context", type=int, default=1024)
    ap.add_argument("--skip", action="append", default=[], help="pytest, small, real, bench")
    ap.add_argument("--bench-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--parts", default="sweep,prefill,offline", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.bench_only:
        bench_main(
            args.out / "engine-cuda.json",
            args.bench_model,
            args.sweep_context,
            args.parts.split(","),
        )
        return 0

    started = time.monotonic()
    report: dict[str, Any] = {
        "schema": "tokenfactory.gpu_check/1",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": environment(),
    }
    path = args.out / "gpu_check.json"

    def save() -> None:
        report["elapsed_s"] = time.monotonic() - started
        path.write_text(json.dumps(report, indent=2, default=str))

    def left() -> float:
        return args.budget_s - (time.monotonic() - started)

    def step(name: str, fn) -> None:
        t0 = time.monotonic()
        print(f"== {name} ({left():.0f} s left)", flush=True)
        try:
            report[name] = fn()
        except Exception as e:  # record and go on: the rest still says something
            report[name] = {"error": repr(e), "traceback": traceback.format_exc()[-3000:]}
        if isinstance(report[name], dict):
            report[name]["seconds"] = time.monotonic() - t0
        print(json.dumps(report[name], indent=1, default=str)[:2000], flush=True)
        save()

    save()
    if not torch.cuda.is_available():
        report["error"] = "no CUDA GPU: nothing to check"
        save()
        print(report["error"])
        return 2
    if "small" not in args.skip:
        step("small_random", lambda: correctness(SMALL, std=0.1))
    if "real" not in args.skip:
        step("real_model", lambda: _real_model_check(args.model))
    # The benchmark first (what the run is for), leaving about 100 s for the GPU tests.
    reserve = 0 if "pytest" in args.skip else 100
    if "bench" not in args.skip:
        step("bench", lambda: _bench_subprocess(args, left() - reserve))
    if "pytest" not in args.skip:
        step("pytest_gpu", lambda: run_pytest(args.out, timeout=int(max(30, left() - 10))))
    report["passed"] = _verdict(report)
    save()
    print(f"== done in {time.monotonic() - started:.0f} s; passed={report['passed']}", flush=True)
    return 0 if report["passed"] else 1


def _real_model_check(model: str | None) -> dict[str, Any]:
    try:
        from tokenfactory.models.loader import load_model_files

        loaded = load_model_files(model)
    except Exception as e:  # the embedded GGUF (94 MiB) is often not on the GPU machine
        return {"skipped": f"no real model here: {e!r}"}
    cfg = loaded.config
    cfg.name = cfg.name or "real"
    return correctness(cfg, std=None, state=loaded.state_dict)


def _bench_subprocess(args, budget: float) -> dict[str, Any]:
    out = args.out / "engine-cuda.json"
    cmd = [
        sys.executable, "-m", "tokenfactory.bench.gpu_check", "--bench-only",
        "--out", str(args.out), "--bench-model", args.bench_model,
        "--sweep-context", str(args.sweep_context),
    ]  # fmt: skip
    timeout = max(60, int(budget - 10))
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=REPO, timeout=timeout, env=os.environ.copy())
        rc: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        rc = None
    result = json.loads(out.read_text()) if out.exists() else {}
    summary: dict[str, Any] = {
        "rc": rc,
        "timed_out": rc is None,
        "seconds": time.monotonic() - t0,
        "file": out.name,
    }
    for row in result.get("decode_sweep", []):
        if "skipped" not in row:
            summary[f"decode_b{row['batch']}"] = {
                k: round(row[k], 4)
                for k in ("step_ms", "tokens_per_s", "tokens_per_s_per_user", "roofline_fraction")
            }
    if "prefill" in result:
        summary["prefill"] = {k: result["prefill"][k] for k in ("tokens_per_s", "matmul_fraction")}
    if "offline" in result:
        summary["offline_output_tokens_per_s"] = result["offline"]["output_tokens_per_s"]
    summary["roofline"] = result.get("roofline")
    summary["engine"] = result.get("engine")
    return summary


def _verdict(report: dict[str, Any]) -> bool:
    ok = True
    for name in ("small_random", "real_model"):
        r = report.get(name)
        if not r or "skipped" in r:
            continue
        if "error" in r:
            return False
        ok &= bool(r["logits_vs_cpu_fp32"]["ok"])
        ok &= bool(r["batch_invariance"]["identical"])
        ok &= bool(r["prefix_cache"]["identical"])
        ok &= bool(r["graphs_vs_eager"]["graphs_captured"])
    py = report.get("pytest_gpu")
    if py and py.get("rc") not in (0, None):
        ok = False
    return ok


if __name__ == "__main__":
    sys.exit(main())
