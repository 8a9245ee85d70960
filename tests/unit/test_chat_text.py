"""Token estimates, truncation, chunks and the context window (pure functions)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcast.chat.text import (
    TRUNCATION_NOTE,
    Turn,
    build_context,
    chunk_text,
    estimate_tokens,
    truncate_to_tokens,
)

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=3000)


def test_estimates() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("a" * 400) == 100
    assert estimate_tokens("a b c d e f") == 6, "never less than one token per word"
    assert estimate_tokens("olá, 世界!") >= 4


@given(texts, st.integers(0, 500))
def test_truncation_respects_the_budget_and_says_so(text: str, budget: int) -> None:
    cut, truncated = truncate_to_tokens(text, budget)
    assert truncated == (estimate_tokens(text) > budget)
    if not truncated:
        assert cut == text
    else:
        assert "truncated by agentcast" in cut
        head = cut.split("\n\n[… truncated by agentcast")[0]
        assert text.startswith(head)
        if budget >= estimate_tokens(TRUNCATION_NOTE.format(dropped=10**6, total=10**6)):
            assert estimate_tokens(cut) <= budget + 2  # the note's digits may differ


def test_truncation_without_note_and_bad_budget() -> None:
    assert truncate_to_tokens("a" * 100, 10, note=False) == ("a" * 40, True)
    with pytest.raises(ValueError):
        truncate_to_tokens("x", -1)


@given(texts, st.integers(1, 200), st.data())
def test_chunks_cover_the_text_with_overlap(text: str, size: int, data: st.DataObject) -> None:
    overlap = data.draw(st.integers(0, size - 1))
    chunks = chunk_text(text, size, overlap)
    if not text:
        assert chunks == []
        return
    assert all(estimate_tokens(c) <= max(size, estimate_tokens(c[:1])) for c in chunks)
    # each chunk starts inside the previous one (or right after it) and the last one ends the text
    position = 0
    rebuilt = ""
    for chunk in chunks:
        start = text.rfind(chunk, 0, position + len(chunk))  # the latest start <= position
        assert 0 <= start <= position
        rebuilt = rebuilt[:start] + chunk
        position = start + len(chunk)
    assert rebuilt == text


def test_chunk_arguments() -> None:
    with pytest.raises(ValueError):
        chunk_text("x", 0)
    with pytest.raises(ValueError):
        chunk_text("x", 5, 5)
    words = " ".join(f"w{i}" for i in range(300))
    chunks = chunk_text(words, 50, 10)
    assert len(chunks) > 5 and all(c.endswith(" ") for c in chunks[:-1]), "cut at spaces"


def test_context_keeps_the_newest_turns_that_fit() -> None:
    history = [Turn("user" if i % 2 == 0 else "assistant", f"turn {i} " * 10) for i in range(20)]
    turns, truncated = build_context("You help.", history, "the new question", 200)
    assert not truncated
    assert turns[0] == Turn("system", "You help.") and turns[-1] == Turn("user", "the new question")
    kept = turns[1:-1]
    assert kept == history[-len(kept) :] and 0 < len(kept) < 20
    total = sum(estimate_tokens(t.content) + 4 for t in turns)
    assert total <= 200
    # everything fits: all of it, in order
    assert build_context(None, history[:2], "q", 10_000)[0] == [*history[:2], Turn("user", "q")]


def test_context_cuts_an_overlong_message() -> None:
    turns, truncated = build_context("sys", [Turn("user", "old")], "x " * 5000, 100)
    assert truncated and turns[-1].role == "user"
    assert "truncated by agentcast" in turns[-1].content
    assert [t.role for t in turns] == ["system", "user"], "no room left for history"
