"""Natural-looking English text generated locally (no downloads), sized in tokens.

Sizes are approximate: `WORDS_PER_TOKEN` words make one token on average for this vocabulary
with the SmolLM2 tokenizer (measured: see docs/bench.md). Pass a tokenizer (anything with
`encode(text) -> list[int]`) to `TextGen` to size text exactly instead.
"""

from __future__ import annotations

import random
from collections.abc import Callable

# Measured with SmolLM2-135M's tokenizer over 20,000 words of this generator's text: 0.906
# words per token (punctuation and capitals included; general English prose is nearer 0.75,
# but this vocabulary is plain, common words). Other English BPE tokenizers land within ~10%.
WORDS_PER_TOKEN = 0.9

_SUBJECTS = (
    "the team",
    "our service",
    "the new model",
    "a small startup",
    "the data center",
    "every customer",
    "the scheduler",
    "the research group",
    "a careful engineer",
    "the city",
    "the old library",
    "this report",
    "the market",
    "the hospital",
    "a young teacher",
    "the weather station",
    "the orchestra",
    "the garden",
    "the river",
    "the museum",
)
_VERBS = (
    "improves",
    "explains",
    "measures",
    "describes",
    "changes",
    "supports",
    "reviews",
    "builds",
    "compares",
    "protects",
    "follows",
    "delivers",
    "shapes",
    "tests",
    "plans",
    "welcomes",
    "studies",
    "connects",
    "reduces",
    "questions",
)
_OBJECTS = (
    "the quarterly results",
    "a simple plan",
    "the shared memory",
    "every request",
    "the morning traffic",
    "a long history",
    "the network",
    "a fair price",
    "the first draft",
    "the energy budget",
    "the summer festival",
    "a better answer",
    "the storage system",
    "the local schools",
    "the train schedule",
    "a quiet room",
    "the open questions",
    "the reading list",
    "the power supply",
    "the main argument",
)
_TAILS = (
    "before the deadline",
    "with great care",
    "in a few minutes",
    "for the whole year",
    "without any delay",
    "after the meeting",
    "across the country",
    "at a steady pace",
    "during the night",
    "for the next release",
    "in plain language",
    "under heavy load",
    "as the notes suggest",
    "with little money",
    "for everyone involved",
)
_OPENERS = (
    "Please explain",
    "Can you summarize",
    "Write a short story about",
    "Describe",
    "Give three reasons why",
    "Compare",
    "Draft an email about",
    "What do you think about",
    "List the main steps of",
    "Tell me about",
)


class TextGen:
    """Seeded sentence generator; `text(n_tokens)` gives about n tokens of prose."""

    def __init__(self, seed: int = 0, encode: Callable[[str], list[int]] | None = None) -> None:
        self.rng = random.Random(seed)
        self.encode = encode

    def sentence(self) -> str:
        r = self.rng
        s = f"{r.choice(_SUBJECTS)} {r.choice(_VERBS)} {r.choice(_OBJECTS)} {r.choice(_TAILS)}."
        return s[0].upper() + s[1:]

    def words(self, n_words: int) -> str:
        out: list[str] = []
        while len(out) < n_words:
            out.extend(self.sentence().split())
        return " ".join(out[: max(n_words, 0)])

    def text(self, n_tokens: int) -> str:
        if n_tokens <= 0:
            return ""
        if self.encode is None:
            return self.words(max(1, round(n_tokens * WORDS_PER_TOKEN)))
        return self._exact(n_tokens)

    def _exact(self, n_tokens: int) -> str:
        assert self.encode is not None
        words = self.words(max(1, round(n_tokens * WORDS_PER_TOKEN * 1.2))).split()
        lo, hi = 1, len(words)
        while lo < hi:  # longest word prefix with at most n_tokens tokens
            mid = (lo + hi + 1) // 2
            if len(self.encode(" ".join(words[:mid]))) <= n_tokens:
                lo = mid
            else:
                hi = mid - 1
        return " ".join(words[:lo])

    def question(self, n_tokens: int) -> str:
        """A user request: an instruction followed by context, about n tokens in all."""
        opener = f"{self.rng.choice(_OPENERS)} {self.rng.choice(_OBJECTS)}."
        return f"{opener} {self.text(max(n_tokens - 8, 1))}"


def count_tokens_approx(text: str) -> int:
    return max(1, round(len(text.split()) / WORDS_PER_TOKEN))


def load_tokenizer(path: str) -> Callable[[str], list[int]]:
    """An `encode` function from a local GGUF file or Hugging Face directory (optional)."""
    from pathlib import Path

    from tokenfactory.models.tokenizer import Tokenizer

    p = Path(path)
    if p.is_dir():
        tok = Tokenizer.from_hf_dir(p)
    else:
        from tokenfactory.models.gguf_file import open_gguf

        tok = Tokenizer.from_gguf_metadata(open_gguf(p).metadata)
    return lambda text: tok.encode(text)
