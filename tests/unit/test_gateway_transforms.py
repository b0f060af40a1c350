"""middle-out: drop from the middle, keep the system prompt and the latest turn, then cut the last turn's middle."""

from __future__ import annotations

import pytest

from server.engine import ChatTurn
from server.engine.errors import ContextLengthExceeded
from server.gateway.transforms import ELLIPSIS, conversation_tokens, fit_context, middle_out


def words(text: str) -> int:
    return len(text.split())


def conversation(turns: int) -> list[ChatTurn]:
    return [ChatTurn("system", "be kind")] + [
        ChatTurn("user" if index % 2 == 0 else "assistant", f"turn{index} " + "word " * 9) for index in range(turns)
    ]


def test_fitting_conversation_is_unchanged() -> None:
    turns = conversation(4)
    assert middle_out(turns, conversation_tokens(turns, words), words) == turns


def test_drops_middle_turns_keeping_system_and_latest() -> None:
    turns = conversation(10)
    budget = conversation_tokens(turns, words) // 2
    kept = middle_out(turns, budget, words)
    assert conversation_tokens(kept, words) <= budget
    assert kept[0] == turns[0] and kept[-1] == turns[-1]
    assert turns[1] in kept  # the oldest turns go last: the middle goes first
    removed = [turn for turn in turns if turn not in kept]
    assert removed and all(turns.index(turn) not in (0, 1, len(turns) - 1) for turn in removed)


def test_truncates_the_middle_of_the_last_turn_when_dropping_is_not_enough() -> None:
    long_question = "start " + "filler " * 200 + "end"
    turns = [ChatTurn("system", "sys"), ChatTurn("user", "old"), ChatTurn("user", long_question)]
    kept = middle_out(turns, 60, words)
    assert [turn.role for turn in kept] == ["system", "user"]
    assert kept[-1].content.startswith("start") and kept[-1].content.endswith("end")
    assert ELLIPSIS in kept[-1].content
    assert conversation_tokens(kept, words) <= 60


def test_fit_context_retries_with_tighter_cuts_until_prepare_accepts() -> None:
    turns = conversation(12)
    calls: list[int] = []

    def prepare(fitted: list[ChatTurn]) -> int:
        size = conversation_tokens(fitted, words)
        calls.append(size)
        if size > 50:  # the real prompt is longer than our estimate
            raise ContextLengthExceeded("too long")
        return size

    assert fit_context(turns, prepare, 80, words) <= 50
    assert len(calls) >= 3  # original, the 80-token cut, then tighter ones


def test_fit_context_gives_up_with_the_overflow() -> None:
    def never(_: list[ChatTurn]) -> int:
        raise ContextLengthExceeded("too long")

    with pytest.raises(ContextLengthExceeded):
        fit_context(conversation(3), never, 10, words)


def quadratic_middle_out(turns: list[ChatTurn], budget: int, count_tokens) -> list[ChatTurn]:
    """The first implementation, which recounted the conversation after each removal: the reference."""
    kept = list(turns)
    first_removable = 0
    while first_removable < len(kept) and kept[first_removable].role == "system":
        first_removable += 1
    while conversation_tokens(kept, count_tokens) > budget and len(kept) - 1 > first_removable:
        del kept[(first_removable + len(kept) - 1) // 2]
    return kept


def test_linear_middle_out_removes_exactly_what_repeated_middle_removal_did() -> None:
    import random

    rng = random.Random(7)
    for _ in range(300):
        systems = rng.randint(0, 2)
        turns = [ChatTurn("system", "s " * rng.randint(0, 5)) for _ in range(systems)] + [
            ChatTurn("user", f"t{index} " + "w " * rng.randint(0, 20)) for index in range(rng.randint(1, 40))
        ]
        total = conversation_tokens(turns, words)
        budget = rng.randint(total // 2, total + 5)  # within reach of dropping alone (no last-turn cut)
        expected = quadratic_middle_out(turns, budget, words)
        if conversation_tokens(expected, words) <= budget:
            assert middle_out(turns, budget, words) == expected


def test_middle_out_counts_each_turn_once() -> None:
    turns = [ChatTurn("system", "sys")] + [ChatTurn("user", f"message {index}") for index in range(20_000)]
    counted: list[str] = []

    def counting(text: str) -> int:
        counted.append(text)
        return len(text.split())

    kept = middle_out(turns, 1000, counting)
    assert conversation_tokens(kept, words) <= 1000
    assert kept[0] == turns[0] and kept[-1] == turns[-1] and kept[1] == turns[1]
    assert len(counted) <= len(turns) + 2 * 8  # one count per turn, plus the last turn's re-counts


def test_fit_context_cuts_a_huge_conversation_without_preparing_it_whole() -> None:
    turns = conversation(5000)
    prepared: list[int] = []

    def prepare(fitted: list[ChatTurn]) -> int:
        prepared.append(len(fitted))
        return len(fitted)

    assert fit_context(turns, prepare, 200, words, context_tokens=256) < len(turns)
    assert prepared and max(prepared) < len(turns)  # the uncut conversation was never rendered
    small = conversation(3)
    assert fit_context(small, prepare, 5, words, context_tokens=10_000) == len(small)  # fits: tried uncut first
