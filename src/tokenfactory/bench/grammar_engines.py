"""llguidance against xgrammar on the model's vocabulary: schema coverage and mask speed.

    python -m tokenfactory.bench.grammar_engines [--out FILE.json]

Run it where xgrammar is importable (it is not a dependency: install it in a throwaway
environment). The shipped schema set is answered greedily by the model under llguidance, then
each answer is replayed token by token through one matcher of each engine on one thread:
the time to compute each next-token mask, and whether the engine accepts every valid answer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import llguidance
import torch

from tokenfactory.bench.structured_output_bench import answer_schema_set, load_schema_set
from tokenfactory.engine.constraints.compile import grammar_text
from tokenfactory.engine.constraints.spec import GrammarSpec
from tokenfactory.engine.constraints.vocab import grammar_tokenizer
from tokenfactory.engine.engine import Engine


def _answers(engine: Engine) -> list[list[int]]:
    return [out.token_ids for out in answer_schema_set(engine, load_schema_set())]


def _llguidance(engine: Engine, schemas: list[str], answers: list[list[int]]) -> dict[str, Any]:
    assert engine.tokenizer is not None
    vocab = engine.model_config.vocab_size
    started = time.perf_counter()  # built afresh: the engine's copy is cached
    llguidance.LLTokenizer(
        engine.tokenizer.backend.to_str(), n_vocab=vocab, eos_token=engine.tokenizer.eos_token_ids
    )
    result: dict[str, Any] = {"tokenizer_s": time.perf_counter() - started}
    tokenizer = grammar_tokenizer(engine.tokenizer, vocab)
    bits = torch.full(((vocab + 31) // 32,), -1, dtype=torch.int32)
    compile_s, mask_s, rejected = [], [], []
    for i, (schema, ids) in enumerate(zip(schemas, answers, strict=True)):
        started = time.perf_counter()
        grammar = grammar_text(GrammarSpec("json_schema", schema))
        matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        compile_s.append(time.perf_counter() - started)
        for token in ids:
            started = time.perf_counter()
            matcher.unsafe_compute_mask_ptr(bits.data_ptr(), bits.numel() * 4)
            mask_s.append(time.perf_counter() - started)
            if not matcher.consume_token(token):
                rejected.append(i)
                break
    return result | _summary(compile_s, mask_s, rejected, len(schemas))


def _xgrammar(engine: Engine, schemas: list[str], answers: list[list[int]]) -> dict[str, Any]:
    import xgrammar as xgr
    from transformers import PreTrainedTokenizerFast

    assert engine.tokenizer is not None
    vocab = engine.model_config.vocab_size
    started = time.perf_counter()
    hf = PreTrainedTokenizerFast(tokenizer_object=engine.tokenizer.backend)
    info = xgr.TokenizerInfo.from_huggingface(
        hf, vocab_size=vocab, stop_token_ids=engine.tokenizer.eos_token_ids
    )
    compiler = xgr.GrammarCompiler(info, max_threads=1)
    result: dict[str, Any] = {"tokenizer_s": time.perf_counter() - started}
    bits = xgr.allocate_token_bitmask(1, vocab)
    compile_s, mask_s, rejected = [], [], []
    for i, (schema, ids) in enumerate(zip(schemas, answers, strict=True)):
        started = time.perf_counter()
        compiled = compiler.compile_json_schema(
            schema, any_whitespace=False, separators=(", ", ": "), strict_mode=True
        )
        compile_s.append(time.perf_counter() - started)
        matcher = xgr.GrammarMatcher(compiled)
        for token in ids:
            started = time.perf_counter()
            matcher.fill_next_token_bitmask(bits)
            mask_s.append(time.perf_counter() - started)
            if not matcher.accept_token(token):
                rejected.append(i)
                break
    return result | _summary(compile_s, mask_s, rejected, len(schemas))


def _summary(
    compile_s: list[float], mask_s: list[float], rejected: list[int], n: int
) -> dict[str, Any]:
    ordered = sorted(mask_s)
    return {
        "accepted": n - len(rejected),
        "rejected": rejected,
        "compile_ms_median": 1e3 * statistics.median(compile_s),
        "compile_ms_max": 1e3 * max(compile_s),
        "mask_ms_mean": 1e3 * statistics.mean(mask_s),
        "mask_ms_p50": 1e3 * ordered[len(ordered) // 2],
        "mask_ms_p99": 1e3 * ordered[int(0.99 * (len(ordered) - 1))],
        "masks": len(mask_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the JSON result here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    engine = Engine.from_model_path()
    cases = load_schema_set()
    schemas = [json.dumps(c.schema) for c in cases]
    answers = _answers(engine)
    result: dict[str, Any] = {
        "schemas": len(cases),
        "answer_tokens": sum(len(a) for a in answers),
        "llguidance": _llguidance(engine, schemas, answers),
        "xgrammar": _xgrammar(engine, schemas, answers),
    }
    for name in ("llguidance", "xgrammar"):
        r = result[name]
        print(
            f"{name:10s} accepted {r['accepted']}/{len(cases)}  tokenizer "
            f"{r['tokenizer_s']:.2f} s  compile median "
            f"{r['compile_ms_median']:.1f} ms (max {r['compile_ms_max']:.1f})  mask mean "
            f"{r['mask_ms_mean']:.3f} ms p50 {r['mask_ms_p50']:.3f} p99 {r['mask_ms_p99']:.3f}"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
