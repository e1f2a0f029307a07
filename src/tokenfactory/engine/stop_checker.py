"""StopChecker: decides when a sequence stops and which text is safe to stream.

Per generated token the caller (which owns the incremental detokenizer) does, in vLLM's order:

1. `check_token(token_id, num_output_tokens)`: EOS / stop token ids end the sequence and
   their text is NOT added; max_tokens or a full context window end it with LENGTH, but the
   token's text is still added (and may still hit a stop string, which then wins).
2. `add_text(delta)`: appends the token's text, looks for stop strings and returns the text
   that may be streamed now.
3. On a finish without a stop string, `flush()` releases the held-back tail.

`step()` does all three in that order.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.engine.sequence import FinishReason


@dataclass(frozen=True)
class StopDecision:
    finished: bool
    reason: FinishReason | None
    stop_reason: str | int | None  # the matched stop string or stop token id; None for EOS/length


CONTINUE = StopDecision(finished=False, reason=None, stop_reason=None)
_EOS = StopDecision(finished=True, reason=FinishReason.STOP, stop_reason=None)
_LENGTH = StopDecision(finished=True, reason=FinishReason.LENGTH, stop_reason=None)


class StopChecker:
    """Stop conditions and stop-string-safe streaming for one sequence.

    Text that could be the start of a stop string is held back until the following text
    proves it is not (at most max(len(stop)) - 1 characters). When several stop strings
    match, the one that completes first wins (ties: the one starting first), which is what
    character-by-character streaming would see, so the result does not depend on how the
    text was split into deltas.
    """

    def __init__(
        self,
        params: SamplingParams,
        eos_token_ids: list[int],
        max_model_len: int,
        prompt_len: int,
    ) -> None:
        self.params = params
        self._eos = frozenset(() if params.ignore_eos else eos_token_ids)
        self._stop_ids = frozenset(params.stop_token_ids)
        self._stops = tuple(dict.fromkeys(params.stop))  # dedupe, keep order
        self._max_model_len = max_model_len
        self._prompt_len = prompt_len
        self._received = ""  # all text added so far (cut at the stop string once matched)
        self._released = 0  # length of the prefix of _received already handed out
        self._stopped: StopDecision | None = None  # set once a stop string matched

    @property
    def text(self) -> str:
        """Everything released so far."""
        return self._received[: self._released]

    def check_token(self, token_id: int, num_output_tokens: int) -> StopDecision:
        """Token-level stop checks; `num_output_tokens` includes `token_id` itself."""
        if token_id in self._eos:
            return _EOS
        if token_id in self._stop_ids:
            return StopDecision(finished=True, reason=FinishReason.STOP, stop_reason=token_id)
        max_tokens = self.params.max_tokens
        if max_tokens is not None and num_output_tokens >= max_tokens:
            return _LENGTH
        if self._prompt_len + num_output_tokens >= self._max_model_len:
            return _LENGTH
        return CONTINUE

    def add_text(self, delta: str) -> tuple[str, StopDecision]:
        """Append a token's text; return (text that may be streamed now, decision)."""
        if self._stopped is not None:
            return "", self._stopped
        if not delta:
            return "", CONTINUE
        old_len = len(self._received)
        self._received += delta
        if not self._stops:
            return self._release(len(self._received)), CONTINUE

        match = self._find_stop(old_len)
        if match is not None:
            pos, stop = match
            out = self._release(pos)
            self._received = self._received[:pos]  # the stop string and beyond are dropped
            self._stopped = StopDecision(finished=True, reason=FinishReason.STOP, stop_reason=stop)
            return out, self._stopped
        return self._release(len(self._received) - self._held_back()), CONTINUE

    def flush(self) -> str:
        """Release the held-back tail (on a finish that was not a stop string)."""
        if self._stopped is not None:
            return ""
        return self._release(len(self._received))

    def step(self, token_id: int, num_output_tokens: int, delta: str) -> tuple[str, StopDecision]:
        """check_token + add_text + flush, in vLLM's order. `delta` is the token's text."""
        decision = self.check_token(token_id, num_output_tokens)
        if decision.finished and decision.reason is FinishReason.STOP:
            return self.flush(), decision  # EOS / stop token: its text is not added
        out, text_decision = self.add_text(delta)
        if text_decision.finished:
            return out, text_decision
        if decision.finished:
            out += self.flush()
        return out, decision

    def _release(self, upto: int) -> str:
        if upto <= self._released:
            return ""
        out = self._received[self._released : upto]
        self._released = upto
        return out

    def _find_stop(self, old_len: int) -> tuple[int, str] | None:
        """Earliest-completing stop string that ends inside the newly added text."""
        best: tuple[int, int, str] | None = None
        for stop in self._stops:
            # Anything matching entirely before old_len was found on an earlier call.
            pos = self._received.find(stop, max(0, old_len - len(stop) + 1))
            if pos >= 0 and (best is None or (pos + len(stop), pos) < best[:2]):
                best = (pos + len(stop), pos, stop)
        return None if best is None else (best[1], best[2])

    def _held_back(self) -> int:
        """Length of the longest tail that is a proper prefix of some stop string."""
        text = self._received
        hold = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(text)), hold, -1):
                if text.endswith(stop[:k]):
                    hold = k
                    break
        return hold
