"""The event-stream decoder of the upstream's fast path (WHATWG HTML §9.2.6): any split of
the body gives the same events, as the spec reads them."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agentcast.chat.eventstream import EventStreamDecoder


def decode(*chunks: bytes) -> list[bytes]:
    decoder = EventStreamDecoder()
    out: list[bytes] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


def test_openai_style_events() -> None:
    body = b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n'
    assert decode(body) == [b'{"a":1}', b'{"b":2}', b"[DONE]"]


def test_every_line_ending_and_a_crlf_split_between_chunks() -> None:
    assert decode(b"data: x\r\n\r\ndata: y\r\rdata: z\n\n") == [b"x", b"y", b"z"]
    assert decode(b"data: x\r", b"\n\r", b"\n") == [b"x"], "CR then LF in the next chunk"
    assert decode(b"data: x\r", b"\r") == [b"x"], "a lone CR ends a line"


def test_fields_comments_and_multiline_data() -> None:
    body = (
        b": keep-alive comment\n\n"  # a comment alone dispatches nothing
        b"event: ping\nid: 7\nretry: 10\n\n"  # no data: nothing
        b"event: message\ndata: one\ndata:two\ndata\n\n"
        b"data:  two spaces\n\n"
        b"dataX: not data\nunknown: field\n\n"
    )
    assert decode(body) == [b"one\ntwo\n", b" two spaces"]


def test_bom_is_dropped_once_even_when_split() -> None:
    assert decode(b"\xef\xbb", b"\xbfdata: a\n\n") == [b"a"]
    assert decode(b"\xef\xbb\xbfdata: a\n\n\xef\xbb\xbfdata: b\n\n") == [b"a"], (
        "a BOM later is part of a line (an unknown field)"
    )


def test_an_unfinished_event_waits_for_its_blank_line() -> None:
    decoder = EventStreamDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"data: b") == []
    assert decoder.feed(b"\n\n") == [b"a\nb"]


_value = st.text(
    alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]), max_size=12
)
_line = st.one_of(
    st.tuples(st.just("data"), _value),
    st.tuples(st.just("comment"), _value),
    st.tuples(st.sampled_from(["event", "id", "retry"]), _value),
)


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(st.lists(_line, max_size=4), max_size=8),
    ending=st.sampled_from(["\n", "\r\n", "\r"]),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=10),
)
def test_any_split_of_any_stream_gives_the_spec_s_events(
    events: list[list[tuple[str, str]]], ending: str, cuts: list[int]
) -> None:
    text, expected = "", []
    for fields in events:
        data = []
        for name, value in fields:
            if name == "comment":
                text += ":" + value + ending
                continue
            text += f"{name}: {value}{ending}"  # one space after the colon is not the value's
            if name == "data":
                data.append(value)
        text += ending
        if data:
            expected.append("\n".join(data).encode())
    body = text.encode()
    points = sorted({min(c, len(body)) for c in cuts})
    chunks = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    assert decode(*chunks) == expected
