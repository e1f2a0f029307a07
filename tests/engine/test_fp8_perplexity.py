"""What FP8 weights cost the embedded model in quality: perplexity on the shipped text,
bf16 against FP8 (`tokenfactory bench perplexity --quantization fp8`), on a short slice."""

from __future__ import annotations

import pytest

from tokenfactory.bench.perplexity import compare, shipped_text
from tokenfactory.engine.config import EngineConfig
from tokenfactory.models.loader import load_model_files

pytestmark = pytest.mark.e2e

# The quality bound this test holds FP8 to, relative to bf16 perplexity. Measured on this
# slice (the text's first 1,024 tokens): 18.89 -> 19.45, +2.9% with the activations smoothed
# on the shipped calibration text (+8.8% without); +3.2% on the whole text (docs/performance.md).
# The aim was 1%, which SmolLM2-135M does not meet with e4m3 weights and per-token e4m3
# activations. The bound leaves room for another CPU's roundings; FP8 without the smoothing,
# a wrong scale or a broken matmul lands outside it.
MAX_RELATIVE_INCREASE = 0.05


@pytest.fixture(scope="module")
def loaded():
    return load_model_files(None)


def test_shipped_text_is_a_few_thousand_tokens(loaded) -> None:
    n = len(loaded.tokenizer.encode(shipped_text()))
    assert 2000 <= n <= 4000


def test_fp8_perplexity_stays_within_the_bound(loaded) -> None:
    result = compare(loaded, EngineConfig(dtype="bfloat16"), "fp8", max_tokens=1024)
    base, fp8 = result.baseline, result.quantized
    assert fp8 is not None and fp8.quantization == "fp8" and base.quantization is None
    assert base.tokens_scored == fp8.tokens_scored == 1023
    assert 1 < base.perplexity < 100  # the model reads English: a sanity floor for the pair
    rel = result.relative_difference
    assert rel is not None and rel != 0.0  # FP8 did run
    assert abs(rel) <= MAX_RELATIVE_INCREASE, result.to_dict()
    # The layer linears' bytes halve; the tied embedding stays bf16.
    assert fp8.weight_bytes < 0.65 * base.weight_bytes
