"""Token arithmetic without a tokenizer: estimates, truncation, overlapping chunks.

Pure functions (no I/O). Token counts are *estimates* (seed 001's ``estimateTokens``):
about four characters per token for prose, never less than one token per word-like run,
which over-estimates slightly for English and stays safe for code and non-Latin text.
Where an exact count matters, an upstream's reported ``usage`` wins.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "TRUNCATION_NOTE",
    "Turn",
    "build_context",
    "chunk_spans",
    "chunk_text",
    "estimate_tokens",
    "truncate_to_tokens",
]

_WORDS = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_SPACE = re.compile(r"\s+")
_LAST_SPACE = re.compile(r"\s(?=\S*\Z)")
_CHARS_PER_TOKEN = 4
_MESSAGE_OVERHEAD = 4
"""Tokens a chat message costs beyond its content (role and separators), as in OpenAI's
accounting for chat models."""

TRUNCATION_NOTE = (
    "\n\n[… truncated by agentcast: {dropped} of {total} estimated tokens "
    "did not fit the model's context]"
)


@dataclass(frozen=True, slots=True)
class Turn:
    """One chat message of a prompt: ``role`` is ``system``, ``user`` or ``assistant``."""

    role: str
    content: str

    def to_openai(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


def estimate_tokens(text: str) -> int:
    """Estimated tokens of ``text``: max(chars / 4, word-like runs); 0 for ``""``."""
    if not text:
        return 0
    by_chars = math.ceil(len(text) / _CHARS_PER_TOKEN)
    by_words = len(_WORDS.findall(text))
    return max(by_chars, by_words)


def _cut(text: str, max_tokens: int) -> str:
    """The longest prefix of ``text`` whose estimate is at most ``max_tokens``."""
    # no longer prefix can fit (its estimate is at least chars / 4): the search and the
    # estimates stay proportional to the budget, not to the text
    text = text[: _CHARS_PER_TOKEN * max_tokens]
    lo, hi = 0, len(text)
    while lo < hi:  # binary search on the prefix length: the estimate is monotonic in it
        mid = (lo + hi + 1) // 2
        if estimate_tokens(text[:mid]) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


def truncate_to_tokens(text: str, max_tokens: int, *, note: bool = True) -> tuple[str, bool]:
    """``text`` cut to at most ``max_tokens`` estimated tokens, and whether it was cut.

    The result is a prefix of ``text``, never over the budget. With ``note`` a cut text
    ends with :data:`TRUNCATION_NOTE` (counted in the budget), so the model and the user
    see that the input was shortened, unless the budget is smaller than the note itself
    (about 25 tokens).
    """
    if max_tokens < 0:
        raise ValueError("max_tokens must be >= 0")
    total = estimate_tokens(text)
    if total <= max_tokens:
        return text, False
    sample = TRUNCATION_NOTE.format(dropped=total, total=total)
    cost = estimate_tokens(sample)  # the real note has no more digits than the sample
    if not note or cost > max_tokens:
        return _cut(text, max_tokens), True
    head = _cut(text, max_tokens - cost)
    dropped = total - estimate_tokens(head)
    return head + TRUNCATION_NOTE.format(dropped=dropped, total=total), True


def chunk_spans(text: str, chunk_tokens: int, overlap_tokens: int = 0) -> list[tuple[int, int]]:
    """The ``(start, end)`` offsets of :func:`chunk_text`'s chunks in ``text``."""
    if chunk_tokens <= 0:
        raise ValueError("chunk_tokens must be > 0")
    if not 0 <= overlap_tokens < chunk_tokens:
        raise ValueError("overlap_tokens must be >= 0 and < chunk_tokens")
    spans: list[tuple[int, int]] = []
    start = 0
    n = len(text)
    window = _CHARS_PER_TOKEN * chunk_tokens  # no chunk is longer
    prev_end = 0
    while start < n:
        piece = _cut(text[start : start + window], chunk_tokens)  # >= 1 char: 1 char = 1 token
        end = start + len(piece)
        if end <= prev_end:  # the overlap leaves no room to move on: no overlap this time
            start = prev_end
            piece = _cut(text[start : start + window], chunk_tokens)
            end = start + len(piece)
        if end < n:  # end after the last whitespace of the chunk's second half, if any
            space = _LAST_SPACE.search(piece, len(piece) // 2)
            if space is not None and start + space.end() > prev_end:
                end = start + space.end()
        spans.append((start, end))
        prev_end = end
        if end >= n:
            break
        next_start = end
        if overlap_tokens:
            next_start -= len(_cut(text[start:end][::-1], overlap_tokens))
            if next_start > 0 and not text[next_start - 1].isspace():  # mid-word
                space = _SPACE.search(text, next_start, end)
                if space is not None:  # start at the overlap's first word instead
                    next_start = space.end()
        start = max(next_start, start + 1)
    return spans


def chunk_text(text: str, chunk_tokens: int, overlap_tokens: int = 0) -> list[str]:
    """Split ``text`` into chunks of at most ``chunk_tokens`` estimated tokens (seed
    001's ``chunkText``), in order, each starting up to ``overlap_tokens`` before the
    previous chunk's end (at a word where the overlap holds a word boundary), so the
    chunks cover the text and joining them without their overlaps gives it back. Chunks
    end at whitespace where there is some in their second half. ``[]`` for ``""``.
    Time and memory are linear in the text's length.
    """
    return [text[start:end] for start, end in chunk_spans(text, chunk_tokens, overlap_tokens)]


def build_context(
    system_prompt: str | None,
    history: Sequence[Turn],
    message: str,
    budget: int,
) -> tuple[list[Turn], bool]:
    """The prompt for a new user ``message``: the system prompt, as many of the most
    recent ``history`` turns as fit ``budget`` estimated tokens, and the message.

    The system prompt and the new message always go in; when they alone exceed the
    budget the message is cut with a note (second value True). Older turns are dropped
    whole, oldest first; the kept turns stay in order.
    """

    def cost(text: str) -> int:
        return estimate_tokens(text) + _MESSAGE_OVERHEAD

    turns: list[Turn] = []
    used = 0
    if system_prompt:
        turns.append(Turn("system", system_prompt))
        used += cost(system_prompt)
    room_for_message = max(0, budget - used - _MESSAGE_OVERHEAD)
    message, truncated = truncate_to_tokens(message, room_for_message)
    used += cost(message)
    kept: list[Turn] = []
    for turn in reversed(history):
        c = cost(turn.content)
        if used + c > budget:
            break
        kept.append(turn)
        used += c
    turns.extend(reversed(kept))
    turns.append(Turn("user", message))
    return turns, truncated
