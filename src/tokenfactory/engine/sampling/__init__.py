"""Sampling: turns one step's logits into next tokens (and logprobs), vectorised over the batch.

Order per row, as in vLLM: grammar mask -> penalties -> (greedy: argmax) -> temperature ->
top-k -> top-p -> min-p -> sample. Logprobs describe the model's raw distribution before
penalties and filters; for a constrained row, over the tokens its grammar allows.

The sampler runs every engine step, so it avoids full-vocabulary work (sorts, per-token noise,
extra passes over [rows, vocab]) wherever an exact shortcut exists; each module says how:

- `sampler`: the `Sampler` class, which sorts rows by kind and runs each group's pipeline.
- `blocks`: argmax and top-k from block maxima.
- `candidates`: top-k / top-p / min-p over each row's top-T candidates.
- `race`: sampling as an exponential race.
- `grammar_mask`: constrained rows' grammar bitmasks applied as -inf, one gather and one add.
- `penalties`: repetition, presence and frequency penalties on the tokens that occur.
- `seeds`: per-request generator seeds, for reproducible seeded requests.
- `logprobs`: `TokenLogprob` and the `SamplerOutput` of a call.
- `workspace`: scratch buffers reused across calls.
"""
