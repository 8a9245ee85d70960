"""Token estimates, truncation, chunks and the context window (``agentcast.chat.text``):
properties over generated texts (hypothesis) and the cases that matter in practice."""

from __future__ import annotations

import time
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentcast.chat.text import (
    TRUNCATION_NOTE,
    Turn,
    build_context,
    chunk_spans,
    chunk_text,
    estimate_tokens,
    truncate_to_tokens,
)
from tests.conftest import UNIT

# texts of any characters (but lone surrogates), and prose-like texts with repeated words
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=3000)
prose = st.lists(
    st.sampled_from(["the", "agent", "streams", "tokens", ",", ".", "\n", "olá", "世界", "x" * 30]),
    max_size=600,
).map(" ".join)
any_text = st.one_of(texts, prose)
NOTE_COST = estimate_tokens(TRUNCATION_NOTE.format(dropped=10**9, total=10**9))
OVERHEAD = 4  # tokens a chat message costs beyond its content


def cost(turns: list[Turn]) -> int:
    return sum(estimate_tokens(t.content) + OVERHEAD for t in turns)


# -- estimates -----------------------------------------------------------------------------


def test_estimates() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("a" * 400) == 100
    assert estimate_tokens("a b c d e f") == 6, "never less than one token per word"
    assert estimate_tokens("olá, 世界!") >= 4
    assert Turn("user", "hi").to_openai() == {"role": "user", "content": "hi"}


@given(any_text, any_text)
def test_estimates_grow_with_the_text_and_add_up(a: str, b: str) -> None:
    whole = estimate_tokens(a + b)
    assert (whole == 0) == (a + b == "")
    assert estimate_tokens(a) <= whole and estimate_tokens(b) <= whole
    assert whole <= estimate_tokens(a) + estimate_tokens(b)
    assert whole >= len(a + b) / 4


# -- truncation ----------------------------------------------------------------------------


@given(any_text, st.integers(0, 800))
def test_truncation_respects_the_budget_and_says_so(text: str, budget: int) -> None:
    cut, truncated = truncate_to_tokens(text, budget)
    assert estimate_tokens(cut) <= budget, "the budget is a hard limit"
    assert truncated == (estimate_tokens(text) > budget)
    if not truncated:
        assert cut == text
        return
    if budget >= NOTE_COST:
        head, sep, note = cut.partition("\n\n[… truncated by agentcast: ")
        assert sep and note.endswith("estimated tokens did not fit the model's context]")
        dropped, total = int(note.split()[0]), int(note.split()[2])
        assert total == estimate_tokens(text) and 0 < dropped <= total
    else:
        head = cut  # no room for the note: a plain cut
    assert text.startswith(head)


@given(any_text, st.integers(0, 800))
def test_truncation_without_note_keeps_the_longest_prefix(text: str, budget: int) -> None:
    cut, truncated = truncate_to_tokens(text, budget, note=False)
    assert text.startswith(cut) and estimate_tokens(cut) <= budget
    if truncated:
        assert estimate_tokens(text[: len(cut) + 1]) > budget, "one more character is too much"


def test_truncation_cases() -> None:
    assert truncate_to_tokens("a" * 100, 10, note=False) == ("a" * 40, True)
    assert truncate_to_tokens("fits", 1) == ("fits", False)
    tiny, truncated = truncate_to_tokens("hello world " * 50, 5)
    assert truncated and tiny == "hello world hello wo", "no room for the note: cut only"
    cut, _ = truncate_to_tokens("hello world " * 500, 100)
    assert cut.startswith("hello world") and cut.endswith("did not fit the model's context]")
    with pytest.raises(ValueError):
        truncate_to_tokens("x", -1)


def test_truncation_time_follows_the_budget_not_the_text() -> None:
    huge = "lorem ipsum dolor sit amet, " * 100_000  # 2.8 MB
    started = time.perf_counter()
    cut, truncated = truncate_to_tokens(huge, 1000)
    assert truncated and estimate_tokens(cut) <= 1000
    assert time.perf_counter() - started < 2 * UNIT


# -- chunks --------------------------------------------------------------------------------


@settings(max_examples=200)
@given(any_text, st.integers(1, 200), st.data())
def test_chunks_cover_the_text_in_order_with_bounded_overlaps(
    text: str, size: int, data: st.DataObject
) -> None:
    overlap = data.draw(st.integers(0, size - 1))
    spans = chunk_spans(text, size, overlap)
    chunks = chunk_text(text, size, overlap)
    assert chunks == [text[s:e] for s, e in spans]
    if not text:
        assert spans == []
        return
    assert spans[0][0] == 0 and spans[-1][1] == len(text), "the chunks cover the text"
    assert all(estimate_tokens(c) <= size for c in chunks), "each chunk fits"
    rebuilt = chunks[0]
    for (s0, e0), (s1, e1) in pairwise(spans):
        assert s0 < s1 <= e0 < e1, "in order, each overlapping or touching the previous"
        assert estimate_tokens(text[s1:e0]) <= overlap, "the overlap is bounded"
        if overlap == 0:
            assert s1 == e0
        rebuilt += text[e0:e1]
    assert rebuilt == text, "joined without their overlaps, the chunks give the text back"


def test_chunks_end_and_overlap_at_word_boundaries() -> None:
    words = " ".join(f"w{i}" for i in range(300))
    spans = chunk_spans(words, 50, 10)
    chunks = [words[s:e] for s, e in spans]
    assert len(chunks) > 5
    assert all(c.endswith(" ") for c in chunks[:-1]), "cut at spaces"
    assert all(c.startswith("w") for c in chunks), "start at a word"
    for (_, e0), (s1, _) in pairwise(spans):
        shared = words[s1:e0]
        assert shared and estimate_tokens(shared) <= 10, "the overlap repeats whole words"
        assert len(shared.split()) >= 2
    # no whitespace in the overlap: it starts mid-word rather than not at all
    solid = "x" * 1000
    spans = chunk_spans(solid, 50, 10)
    assert all(s1 == e0 - 40 for (_, e0), (s1, _) in pairwise(spans))
    # whitespace is any whitespace: lines are kept whole where possible
    lines = "\n".join(f"line {i} of the text" for i in range(100))
    assert all(c.endswith("\n") for c in chunk_text(lines, 40)[:-1])


def test_chunk_arguments() -> None:
    with pytest.raises(ValueError):
        chunk_text("x", 0)
    with pytest.raises(ValueError):
        chunk_text("x", 5, 5)
    with pytest.raises(ValueError):
        chunk_text("x", 5, -1)
    assert chunk_text("", 5) == []
    assert chunk_text("short text", 100, 10) == ["short text"]


def test_chunking_time_is_linear() -> None:
    text = "lorem ipsum dolor sit amet, " * 40_000  # 1.1 MB, ~280 chunks
    started = time.perf_counter()
    chunks = chunk_text(text, 1000, 100)
    assert len(chunks) > 250
    assert time.perf_counter() - started < 3 * UNIT


# -- the context window --------------------------------------------------------------------

turns = st.lists(
    st.builds(Turn, st.sampled_from(["user", "assistant"]), any_text),
    max_size=12,
)


@given(st.one_of(st.none(), any_text), turns, any_text, st.integers(0, 2000))
def test_context_keeps_the_newest_turns_that_fit(
    system: str | None, history: list[Turn], message: str, budget: int
) -> None:
    prompt, truncated = build_context(system, history, message, budget)
    head = [Turn("system", system)] if system else []
    assert prompt[: len(head)] == head, "the system prompt comes first"
    last = prompt[-1]
    assert last.role == "user" and message.startswith(last.content.split("\n\n[…")[0])
    kept = prompt[len(head) : -1]
    assert kept == (history[len(history) - len(kept) :] if kept else []), (
        "the newest turns, whole and in order"
    )
    room = max(0, budget - cost(head) - OVERHEAD)
    assert truncated == (estimate_tokens(message) > room)
    if not truncated:
        assert last.content == message
    elif room >= NOTE_COST:
        assert "truncated by agentcast" in last.content
    if cost(head) + OVERHEAD <= budget:
        assert cost(prompt) <= budget, "the prompt fits the budget"
        if len(kept) < len(history):
            older = history[len(history) - len(kept) - 1]
            assert cost(prompt) + estimate_tokens(older.content) + OVERHEAD > budget, (
                "the next older turn did not fit"
            )


def test_context_keeps_the_newest_turns() -> None:
    history = [Turn("user" if i % 2 == 0 else "assistant", f"turn {i} " * 10) for i in range(20)]
    turns_, truncated = build_context("You help.", history, "the new question", 200)
    assert not truncated
    assert turns_[0] == Turn("system", "You help.")
    assert turns_[-1] == Turn("user", "the new question")
    kept = turns_[1:-1]
    assert kept == history[-len(kept) :] and 0 < len(kept) < 20
    assert cost(turns_) <= 200
    assert build_context(None, history[:2], "q", 10_000)[0] == [*history[:2], Turn("user", "q")]


def test_context_cuts_an_overlong_message() -> None:
    turns_, truncated = build_context("sys", [Turn("user", "old")], "x " * 5000, 100)
    assert truncated and turns_[-1].role == "user"
    assert "truncated by agentcast" in turns_[-1].content
    assert [t.role for t in turns_] == ["system", "user"], "no room left for history"
    assert cost(turns_) <= 100


def test_chunks_move_on_when_the_overlap_would_repeat_a_chunk() -> None:
    # found by hypothesis: the overlap plus a word-boundary cut once ended a chunk where
    # the previous one ended
    text = "0000000 000000"
    spans = chunk_spans(text, 3, 2)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for (s0, e0), (s1, e1) in pairwise(spans):
        assert s0 < s1 <= e0 < e1
