"""GrammarMatcher: one constrained request's place in its grammar.

It has consumed exactly the request's output tokens so far: the engine advances it by every
token it appends, so after a preemption (the output kept, its K/V recomputed) it is already
where the request resumes, with nothing to replay.
"""

from __future__ import annotations

import llguidance

from tokenfactory.engine.constraints.compile import grammar_error, grammar_text
from tokenfactory.engine.constraints.spec import GrammarSpec
from tokenfactory.engine.errors import InvalidRequestError


class GrammarMatcher:
    def __init__(self, matcher: llguidance.LLMatcher) -> None:
        self.matcher = matcher

    @classmethod
    def compile(cls, spec: GrammarSpec, tokenizer: llguidance.LLTokenizer) -> GrammarMatcher:
        """A fresh matcher at the grammar's start; InvalidRequestError (param "grammar") when
        the grammar engine cannot serve `spec`."""
        matcher = llguidance.LLMatcher(tokenizer, grammar_text(spec), log_level=0)
        if matcher.is_error():
            why = grammar_error(spec, tokenizer) or matcher.get_error()
            raise InvalidRequestError(f"the grammar cannot be served: {why}", "grammar")
        return cls(matcher)

    def copy(self) -> GrammarMatcher:
        """An independent matcher in the same state, sharing the compiled grammar."""
        return GrammarMatcher(self.matcher.deep_copy())

    def accept(self, token_id: int) -> bool:
        """Advance by one sampled token; False (and the matcher is in error) if the grammar
        does not allow it, which masked sampling never produces."""
        return self.matcher.consume_token(token_id)

    def accept_all(self, token_ids: list[int]) -> bool:
        return self.matcher.consume_tokens(token_ids)

    @property
    def is_finished(self) -> bool:
        """The grammar can take no more text (only EOS): the request is complete."""
        return self.matcher.is_stopped()

    @property
    def is_accepting(self) -> bool:
        """The text so far is a whole sentence of the grammar (it may still go on)."""
        return self.matcher.is_accepting()

    @property
    def error(self) -> str | None:
        return self.matcher.get_error() or None

    def rollback(self, num_tokens: int) -> None:
        if not self.matcher.rollback(num_tokens):
            raise RuntimeError(f"the grammar matcher could not roll back {num_tokens} tokens")
