"""What the Q4_1 decode route costs in quality: perplexity on the shipped text, bf16 weights
against every layer linear on the stored Q4_1 weights with int8 activations.

Decode steps of up to `q4_linear.decode_max_rows()` rows read Q4_1; prompt steps read the bf16
weights (dequantized from the same Q4_1 blocks). Scoring a text runs prompt steps, so this
routes every layer linear of the scoring forward through `q4_linear` (in calls of up to
`skinny.MAX_M` rows; each row's result is that of the row alone) to see the decode route's
logits on every token. Both runs score the same windows as `tokenfactory bench perplexity`.

    .venv/bin/python tools/q4_perplexity_check.py [--window 1024]
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from tokenfactory.bench.perplexity import score, shipped_text
from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.model_setup import build_model
from tokenfactory.kernels import q4_linear, skinny
from tokenfactory.models import llama
from tokenfactory.models.loader import load_model_files


@contextmanager
def every_linear_on_q4() -> Iterator[None]:
    plain = llama.Linear.forward

    def forward(self: llama.Linear, x: torch.Tensor, batched: bool = False) -> torch.Tensor:
        if self.q4 is None:
            return plain(self, x, batched)
        parts = []
        for i in range(0, x.shape[0], skinny.MAX_M):
            y = q4_linear.q4_linear(x[i : i + skinny.MAX_M].contiguous(), self.q4, self.bias)
            if y is None:
                raise SystemExit("the Q4_1 kernel did not take a call (no AVX512-BF16/VNNI?)")
            parts.append(y)
        return torch.cat(parts)

    llama.Linear.forward = forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        llama.Linear.forward = plain  # type: ignore[method-assign]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--window", type=int, default=1024)
    args = ap.parse_args()
    if not q4_linear.available():
        raise SystemExit("the Q4_1 kernel needs a CPU with AVX512-BF16 and VNNI")
    loaded = load_model_files(None, q4_weights=True)
    ids = loaded.tokenizer.encode(shipped_text())
    model = build_model(loaded.config, EngineConfig(), loaded.state_dict)
    nll, n = score(model, ids, args.window)
    attached = model.attach_q4_weights(loaded.q4_weights)
    with every_linear_on_q4():
        nll_q4, n_q4 = score(model, ids, args.window)
    bf16, q4 = math.exp(nll / n), math.exp(nll_q4 / n_q4)
    result = {
        "tokens_scored": n,
        "q4_linears": attached,
        "perplexity_bf16_weights": bf16,
        "perplexity_q4_int8_route": q4,
        "relative_difference": q4 / bf16 - 1,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
