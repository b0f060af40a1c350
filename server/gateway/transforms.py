"""`transforms: ["middle-out"]` (seed 002): fit an over-long conversation into the context.

Messages are dropped from the middle first (the middle of a long chat matters
least: the system prompt sets the task, the latest turns carry the question);
if the system prompt and the last message alone are still too long, the last
message loses its middle. Pure: tokens are counted by the function passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TypeVar

from server.engine import ChatTurn
from server.engine.errors import ContextLengthExceeded

T = TypeVar("T")

MIDDLE_OUT = "middle-out"
MESSAGE_OVERHEAD_TOKENS = 4  # role header and separators a chat template adds per message
ELLIPSIS = "\n…\n"
TRUNCATE_ATTEMPTS = 8


def conversation_tokens(turns: Sequence[ChatTurn], count_tokens: Callable[[str], int]) -> int:
    return sum(count_tokens(turn.content) + MESSAGE_OVERHEAD_TOKENS for turn in turns)


def middle_out(
    turns: Sequence[ChatTurn],
    budget: int,
    count_tokens: Callable[[str], int],
    counts: Sequence[int] | None = None,
) -> list[ChatTurn]:
    """`turns` cut to at most `budget` tokens (as `conversation_tokens` counts them). Linear in the turns.

    Removing the middle turn of the removable span again and again removes a window that grows from its
    centre, alternately on the left and the right: so each turn is counted once (`counts`, when the caller
    has them) and the window's edges are found by arithmetic, never by recounting the conversation.
    """
    counts = list(counts) if counts is not None else [count_tokens(turn.content) for turn in turns]
    sizes = [count + MESSAGE_OVERHEAD_TOKENS for count in counts]
    total = sum(sizes)
    first_removable = 0
    while first_removable < len(turns) and turns[first_removable].role == "system":
        first_removable += 1
    # The removable span: after the system prompt, before the last turn. Kept: its first `head` and last `tail`.
    span = max(len(turns) - 1 - first_removable, 0)
    head, tail = span, 0
    split = False
    while total > budget and head + tail > 0:
        if not split:  # the first removal splits the span at its middle
            head, tail, index, split = span // 2, span - span // 2 - 1, first_removable + span // 2, True
        elif (head + tail) // 2 < head:  # then the middle of what is left is always at the window's edge
            head -= 1
            index = first_removable + head
        else:
            index = first_removable + span - tail
            tail -= 1
        total -= sizes[index]
    keep = [*range(first_removable + head), *range(first_removable + span - tail, len(turns))]
    kept = [turns[index] for index in keep]
    others = total - (sizes[-1] if kept else 0)  # every kept turn but the last
    # Character proportions only estimate tokens: cut more until the count agrees.
    last, shed = kept[-1] if kept else None, 0
    last_tokens = counts[-1] if kept else 0
    for _ in range(TRUNCATE_ATTEMPTS):
        excess = others + last_tokens + MESSAGE_OVERHEAD_TOKENS - budget
        if excess <= 0 or last is None:
            break
        shed += excess
        kept[-1] = _without_middle(last, shed, count_tokens)
        last_tokens = count_tokens(kept[-1].content)
    return kept


def _without_middle(turn: ChatTurn, excess: int, count_tokens: Callable[[str], int]) -> ChatTurn:
    """`turn` with enough of the middle of its text cut out to shed `excess` tokens (by proportion of characters)."""
    text = turn.content
    tokens = max(count_tokens(text), 1)
    keep_chars = max(int(len(text) * (tokens - excess - count_tokens(ELLIPSIS)) / tokens), 0)
    head = keep_chars // 2
    tail = keep_chars - head
    return replace(turn, content=text[:head] + ELLIPSIS + (text[len(text) - tail :] if tail else ""))


FIT_ATTEMPTS = 4
BUDGET_SHRINK = 0.8  # our per-message overhead is an estimate: each retry asks for a fifth less


def fit_context(
    turns: Sequence[ChatTurn],
    prepare: Callable[[list[ChatTurn]], T],
    budget: int,
    count_tokens: Callable[[str], int],
    context_tokens: int | None = None,
) -> T:
    """`prepare(turns)`; when that overflows the context, `prepare` of the middle-out cut (then tighter cuts).

    With `context_tokens` (the model's context), a conversation whose turns alone hold more tokens is cut
    without rendering and tokenizing it whole first: a huge request costs the work of its cut, not of itself.
    """
    counts = [count_tokens(turn.content) for turn in turns]  # once, for every attempt (short texts, one by one)
    failure: ContextLengthExceeded | None = None
    if context_tokens is None or sum(counts) <= context_tokens:
        try:
            return prepare(list(turns))
        except ContextLengthExceeded as overflow:
            failure = overflow
    for _ in range(FIT_ATTEMPTS):
        try:
            return prepare(middle_out(turns, budget, count_tokens, counts))
        except ContextLengthExceeded as overflow:
            failure, budget = overflow, int(budget * BUDGET_SHRINK)
    assert failure is not None  # FIT_ATTEMPTS >= 1
    raise failure
