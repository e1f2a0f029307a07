"""StopChecker: token-level stops, stop strings across deltas, safe streaming."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.engine.sequence import FinishReason
from tokenfactory.engine.stop_checker import StopChecker, StopDecision

EOS = 2


def checker(
    max_model_len: int = 1000, prompt_len: int = 10, eos: tuple[int, ...] = (EOS,), **kw: object
) -> StopChecker:
    params = SamplingParams(**kw)  # type: ignore[arg-type]
    return StopChecker(params, list(eos), max_model_len=max_model_len, prompt_len=prompt_len)


def feed(c: StopChecker, deltas: list[str]) -> tuple[str, StopDecision]:
    """Stream deltas until a stop string ends it; flush otherwise. Returns all released text."""
    out = []
    for d in deltas:
        text, decision = c.add_text(d)
        out.append(text)
        if decision.finished:
            return "".join(out), decision
    out.append(c.flush())
    return "".join(out), StopDecision(False, None, None)


# --- stop strings -----------------------------------------------------------------------------


def test_stop_string_inside_one_delta() -> None:
    c = checker(stop=["STOP"])
    text, d = c.add_text("hello STOP world")
    assert text == "hello "
    assert d == StopDecision(True, FinishReason.STOP, "STOP")
    assert c.text == "hello "
    assert c.flush() == ""
    assert c.add_text("more") == ("", d)


def test_stop_string_across_deltas() -> None:
    c = checker(stop=["STOP"])
    first, d1 = c.add_text("Hello ST")
    assert first == "Hello " and not d1.finished  # "ST" might start STOP: held back
    second, d2 = c.add_text("OP and more")
    assert second == ""
    assert d2.finished and d2.stop_reason == "STOP"
    assert c.text == "Hello "


def test_stop_string_split_over_many_deltas() -> None:
    c = checker(stop=["<|end|>"])
    text, d = feed(c, ["ab", "<", "|", "en", "d|", ">tail"])
    assert text == "ab" and d.stop_reason == "<|end|>"


def test_held_back_prefix_released_when_it_does_not_complete() -> None:
    c = checker(stop=["STOP"])
    assert c.add_text("a ST")[0] == "a "
    assert c.add_text("A")[0] == "STA"  # cannot start STOP any more
    assert c.add_text("x S")[0] == "x "
    assert c.flush() == "S"
    assert c.text == "a STAx S"


def test_text_without_stop_prefix_streams_immediately() -> None:
    c = checker(stop=["STOP"])
    assert c.add_text("hello")[0] == "hello"
    c = checker()
    assert c.add_text("anything S")[0] == "anything S"


def test_multiple_stop_strings_earliest_wins() -> None:
    c = checker(stop=["END", "STOP"])
    text, d = c.add_text("one STOP two END")
    assert text == "one " and d.stop_reason == "STOP"
    c = checker(stop=["END", "STOP"])
    text, d = feed(c, ["one E", "ND two STOP"])
    assert text == "one " and d.stop_reason == "END"


def test_overlapping_stops_do_not_depend_on_split() -> None:
    # "bc" completes before "abcd": same answer in one delta or char by char.
    whole = feed(checker(stop=["abcd", "bc"]), ["xabcd"])
    chars = feed(checker(stop=["abcd", "bc"]), list("xabcd"))
    assert whole == chars
    assert whole[0] == "xa" and whole[1].stop_reason == "bc"


def test_released_text_never_starts_a_later_stop() -> None:
    stop = "abab"
    c = checker(stop=[stop])
    released = ""
    for ch in "xabaabab":
        text, d = c.add_text(ch)
        released += text
        assert stop not in released
        if d.finished:
            break
    assert released == "xaba"
    assert d.stop_reason == stop


def test_empty_delta() -> None:
    c = checker(stop=["x"])
    assert c.add_text("") == ("", StopDecision(False, None, None))


# --- token-level checks -----------------------------------------------------------------------


def test_eos_stops() -> None:
    assert checker().check_token(EOS, 1) == StopDecision(True, FinishReason.STOP, None)
    assert not checker().check_token(5, 1).finished


def test_ignore_eos() -> None:
    assert not checker(ignore_eos=True).check_token(EOS, 1).finished


def test_multiple_eos_ids() -> None:
    c = checker(eos=(2, 7))
    assert c.check_token(7, 1).reason is FinishReason.STOP


def test_stop_token_ids_set_stop_reason() -> None:
    c = checker(stop_token_ids=[11, 12], ignore_eos=True)
    assert c.check_token(12, 3) == StopDecision(True, FinishReason.STOP, 12)


def test_max_tokens_length() -> None:
    c = checker(max_tokens=3)
    assert not c.check_token(5, 2).finished
    assert c.check_token(5, 3) == StopDecision(True, FinishReason.LENGTH, None)


def test_eos_on_last_allowed_token_is_stop() -> None:
    assert checker(max_tokens=3).check_token(EOS, 3).reason is FinishReason.STOP
    d = checker(max_tokens=3, stop_token_ids=[9]).check_token(9, 3)
    assert d.reason is FinishReason.STOP and d.stop_reason == 9


def test_context_window_length() -> None:
    c = checker(max_tokens=None, max_model_len=16, prompt_len=10)
    assert not c.check_token(5, 5).finished
    assert c.check_token(5, 6) == StopDecision(True, FinishReason.LENGTH, None)


# --- step(): the whole per-token protocol -----------------------------------------------------


def test_step_stop_token_does_not_add_text_but_flushes() -> None:
    c = checker(stop=["STOP"])
    assert c.step(5, 1, "hi S") == ("hi ", StopDecision(False, None, None))
    out, d = c.step(EOS, 2, "</s>")
    assert out == "S" and d.reason is FinishReason.STOP and d.stop_reason is None
    assert c.text == "hi S"


def test_step_length_adds_text_and_flushes() -> None:
    c = checker(stop=["STOP"], max_tokens=2)
    c.step(5, 1, "a")
    out, d = c.step(6, 2, " ST")
    assert out == " ST" and d.reason is FinishReason.LENGTH


def test_step_stop_string_beats_length() -> None:
    c = checker(stop=["STOP"], max_tokens=2)
    c.step(5, 1, "a ST")
    out, d = c.step(6, 2, "OP")
    assert out == "" and d == StopDecision(True, FinishReason.STOP, "STOP")
    assert c.text == "a "


# --- property: streaming == truncating the whole text -----------------------------------------

ALPHABET = "abc "


def split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in zip(points, points[1:], strict=False)]


def reference(text: str, stops: list[str]) -> tuple[str, str | None]:
    """Cut at the stop string that completes first (ties: the one starting first)."""
    best: tuple[int, int, str] | None = None
    for s in stops:
        pos = text.find(s)
        if pos >= 0 and (best is None or (pos + len(s), pos) < best[:2]):
            best = (pos + len(s), pos, s)
    return (text, None) if best is None else (text[: best[1]], best[2])


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet=ALPHABET, max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=12),
    stop=st.text(alphabet=ALPHABET, min_size=1, max_size=4),
)
def test_streamed_text_equals_truncated_text(text: str, cuts: list[int], stop: str) -> None:
    c = checker(stop=[stop])
    released, decision = feed(c, split(text, cuts))
    pos = text.find(stop)
    if pos >= 0:
        assert released == text[:pos]
        assert decision == StopDecision(True, FinishReason.STOP, stop)
    else:
        assert released == text
        assert not decision.finished
    assert c.text == released


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet=ALPHABET, max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=12),
    stops=st.lists(st.text(alphabet=ALPHABET, min_size=1, max_size=4), min_size=1, max_size=4),
)
def test_multiple_stops_independent_of_split(text: str, cuts: list[int], stops: list[str]) -> None:
    released, decision = feed(checker(stop=stops), split(text, cuts))
    expected, reason = reference(text, stops)
    assert released == expected
    assert decision.stop_reason == reason
    # Safety while streaming: every prefix handed out is a prefix of the final answer.
    c = checker(stop=stops)
    so_far = ""
    for piece in split(text, cuts):
        out, d = c.add_text(piece)
        so_far += out
        assert expected.startswith(so_far)
        if d.finished:
            break
