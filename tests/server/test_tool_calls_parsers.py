"""The family parsers, fed whole texts and char-by-char splits: content, calls, malformed and
unfinished calls, several calls; the events concatenate to what the final reading says."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenfactory.server.chat_events import (
    ChatEvent,
    OutputParser,
    TextDelta,
    ToolCallArguments,
    ToolCallStart,
)
from tokenfactory.server.tool_calls.llama3 import Llama3JsonParser
from tokenfactory.server.tool_calls.setup import FirstCallOnly
from tokenfactory.server.tool_calls.tagged import hermes_parser, smollm2_parser

SPLITS = [None, 1, 2, 3, 7]


def run(parser: OutputParser, text: str, step: int | None) -> list[ChatEvent]:
    events: list[ChatEvent] = []
    pieces = [text] if step is None else [text[i : i + step] for i in range(0, len(text), step)]
    for piece in pieces:
        events += parser.feed(piece)
    events += parser.finish()
    return events


def streamed(events: list[ChatEvent]) -> tuple[str, list[tuple[str, str]]]:
    """What a streaming client puts together from the events."""
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    calls: dict[int, list[str]] = {}
    for e in events:
        if isinstance(e, ToolCallStart):
            assert e.index not in calls and e.call_id.startswith("call_")
            calls[e.index] = [e.name, ""]
        elif isinstance(e, ToolCallArguments):
            calls[e.index][1] += e.fragment
    return text, [(n, a) for _, (n, a) in sorted(calls.items())]


def reading(parser: OutputParser) -> tuple[str, list[tuple[str, str]]]:
    return parser.text, [(c.name, c.arguments) for c in parser.tool_calls]


HERMES_TWO = (
    'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
    '"days": [1, 2], "note": "a \\"quoted\\" }"}}\n</tool_call>\n<tool_call>\n'
    '{"arguments": {}, "name": "now"}\n</tool_call>'
)
HERMES_CALLS = [
    ("get_weather", '{"city": "Paris", "days": [1, 2], "note": "a \\"quoted\\" }"}'),
    ("now", "{}"),
]


@pytest.mark.parametrize("step", SPLITS)
def test_hermes_text_then_two_calls(step):
    parser = hermes_parser()
    events = run(parser, HERMES_TWO, step)
    assert reading(parser) == ("Let me check.", HERMES_CALLS)
    assert streamed(events) == ("Let me check.", HERMES_CALLS)
    for _, args in HERMES_CALLS:
        json.loads(args)


@pytest.mark.parametrize("step", SPLITS)
def test_hermes_plain_text_with_angle_brackets_is_content(step):
    text = "a < b and <tool is not a tag; </tool_call> neither"
    parser = hermes_parser()
    events = run(parser, text, step)
    assert reading(parser) == (text, [])
    assert streamed(events) == (text, [])


@pytest.mark.parametrize("step", SPLITS)
@pytest.mark.parametrize(
    "bad",
    [
        '<tool_call>{"name": 3}</tool_call>',  # name not a string
        "<tool_call>not json</tool_call>",
        '<tool_call>{"name": "f", "arguments": [1]}</tool_call>',  # arguments not an object
        '<tool_call>{"name": "f", "arguments": {"a": tru}}</tool_call>',  # bad literal
        '<tool_call>{"arguments": {"a": 1}}</tool_call>',  # no name
    ],
)
def test_hermes_malformed_call_is_left_as_text(step, bad):
    text = f"before {bad} after"
    parser = hermes_parser()
    run(parser, text, step)
    assert reading(parser) == (text, [])


@pytest.mark.parametrize("step", SPLITS)
def test_hermes_malformed_before_the_name_streams_as_text(step):
    text = "x <tool_call>{oops}</tool_call> y"
    parser = hermes_parser()
    events = run(parser, text, step)
    assert streamed(events) == (text, [])


@pytest.mark.parametrize("step", SPLITS)
def test_hermes_call_cut_short_is_content_in_the_final_reading(step):
    text = 'Sure <tool_call>{"name": "get_weather", "arguments": {"city": "Par'
    parser = hermes_parser()
    events = run(parser, text, step)
    assert reading(parser) == (text, [])
    # the stream announced the call before it was cut: its fragments are what was generated
    said_text, said_calls = streamed(events)
    assert said_text == "Sure "
    assert said_calls == [("get_weather", '{"city": "Par')]


@pytest.mark.parametrize("step", SPLITS)
def test_hermes_cut_before_the_name_streams_as_text(step):
    text = 'ok <tool_call>{"na'
    parser = hermes_parser()
    events = run(parser, text, step)
    assert streamed(events) == (text, []) and reading(parser) == (text, [])


@pytest.mark.parametrize("step", SPLITS)
def test_hermes_missing_close_tag_still_a_call(step):
    parser = hermes_parser()
    run(parser, '<tool_call>{"name": "f", "arguments": {"x": 1}}', step)
    assert reading(parser) == ("", [("f", '{"x": 1}')])


def test_hermes_arguments_stream_before_the_call_is_complete():
    parser = hermes_parser()
    first = parser.feed('<tool_call>{"name": "f", "arguments": {"q": "hel')
    assert [type(e) for e in first] == [ToolCallStart, ToolCallArguments]
    assert first[1].fragment == '{"q": "hel'
    more = parser.feed('lo"}}</tool_call>')
    assert more == [ToolCallArguments(0, 'lo"}')]


def test_hermes_arguments_before_name_are_said_once_the_name_is():
    parser = hermes_parser()
    assert parser.feed('<tool_call>{"arguments": {"a": 1}, ') == []
    events = parser.feed('"name": "f"}')
    assert [type(e) for e in events] == [ToolCallStart, ToolCallArguments]
    assert events[1].fragment == '{"a": 1}'


def test_unknown_key_in_a_call_is_text():
    parser = hermes_parser()
    run(parser, '<tool_call>{"name": "f", "answer": 1}</tool_call>', None)
    assert parser.tool_calls == []


SMOL = (
    '<tool_call>[{"name": "get_weather", "arguments": {"city": "Oslo"}}, '
    '{"name": "add", "arguments": {"a": 1, "b": 2.5e1}}]</tool_call>'
)


@pytest.mark.parametrize("step", SPLITS)
def test_smollm2_list_of_calls(step):
    parser = smollm2_parser()
    events = run(parser, SMOL, step)
    calls = [("get_weather", '{"city": "Oslo"}'), ("add", '{"a": 1, "b": 2.5e1}')]
    assert reading(parser) == ("", calls)
    assert streamed(events) == ("", calls)
    assert [e.index for e in events if isinstance(e, ToolCallStart)] == [0, 1]


@pytest.mark.parametrize("step", SPLITS)
def test_smollm2_empty_list_and_object_instead_of_list(step):
    parser = smollm2_parser()
    run(parser, "<tool_call>[]</tool_call>", step)
    assert reading(parser) == ("", [])
    parser = smollm2_parser()
    text = '<tool_call>{"name": "f", "arguments": {}}</tool_call>'
    run(parser, text, step)
    assert reading(parser) == (text, [])


LLAMA = (
    ' {"name": "get_weather", "parameters": {"city": "Rome"}}; {"name": "now", "parameters": {}}'
)


@pytest.mark.parametrize("step", SPLITS)
def test_llama3_json_calls(step):
    parser = Llama3JsonParser()
    events = run(parser, LLAMA, step)
    calls = [("get_weather", '{"city": "Rome"}'), ("now", "{}")]
    assert reading(parser) == ("", calls)
    assert streamed(events) == ("", calls)


@pytest.mark.parametrize("step", SPLITS)
def test_llama3_python_tag_and_arguments_key(step):
    parser = Llama3JsonParser()
    run(parser, '<|python_tag|>{"name": "f", "arguments": {"x": [true, null]}}', step)
    assert reading(parser) == ("", [("f", '{"x": [true, null]}')])


@pytest.mark.parametrize("step", SPLITS)
@pytest.mark.parametrize(
    "text",
    [
        "The answer is 4.",
        'Here: {"name": "f", "parameters": {}}',  # a call only counts at the start
        '{"answer": 42}',
        '{"name": "Bob", "age": 3}',
    ],
)
def test_llama3_other_replies_are_content(step, text):
    parser = Llama3JsonParser()
    run(parser, text, step)
    assert reading(parser) == (text, [])


def test_first_call_only_drops_later_calls():
    parser = FirstCallOnly(hermes_parser())
    events = run(parser, HERMES_TWO, 1)
    assert reading(parser) == ("Let me check.", HERMES_CALLS[:1])
    assert streamed(events) == ("Let me check.", HERMES_CALLS[:1])


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(
    calls=st.lists(
        st.tuples(
            st.from_regex(r"[a-zA-Z0-9_-]{1,12}", fullmatch=True),
            st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=4),
        ),
        min_size=1,
        max_size=3,
    ),
    text=st.text(alphabet='ab <>{}[]"\n', max_size=12),
    cuts=st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=40),
    seps=st.sampled_from([(", ", ": "), (",", ":")]),
)
def test_any_json_arguments_come_back_exactly(calls, text, cuts, seps):
    """Whatever JSON the model writes as arguments, split anywhere, it is read back as the
    exact text written, in the final reading and in the streamed fragments."""
    text = text.replace("<tool_call>", "")
    blocks = [
        "<tool_call>" + json.dumps({"name": n, "arguments": a}, separators=seps) + "</tool_call>"
        for n, a in calls
    ]
    reply = text + "".join(blocks)
    parser = hermes_parser()
    events: list[ChatEvent] = []
    pos, i = 0, 0
    while pos < len(reply):
        step = cuts[i % len(cuts)]
        events += parser.feed(reply[pos : pos + step])
        pos, i = pos + step, i + 1
    events += parser.finish()
    expected = [(n, json.dumps(a, separators=seps)) for n, a in calls]
    got = [(c.name, c.arguments) for c in parser.tool_calls]
    assert got == expected
    assert [json.loads(a) for _, a in got] == [a for _, a in calls]
    assert streamed(events) == (parser.text, expected)
    assert parser.text == text
