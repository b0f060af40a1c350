"""Zero-leak stream guarding: windows, hold-back and release order (pure logic; the check is a parameter)."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import pytest

from server.engine import CompletionDelta, ToolCallChunk
from server.guardrails.checker import Verdict
from server.guardrails.errors import GuardrailViolation
from server.guardrails.stream import PolicyWindow, checked_whole, delta_text, guarded


def test_window_checks_every_chunk_size_chunks_over_the_latest_units() -> None:
    window = PolicyWindow(chunk_size=2, sliding_window=3)
    due = [window.add(text) for text in "ab"]
    assert due == [False, True]
    assert window.take_window() == "ab"
    for text in "cdefgh":
        if window.add(text):
            last = window.take_window()
    assert last == "cdefgh"  # units cd, ef, gh: the oldest (ab) slid out
    assert not window.unchecked
    window.add("i")
    assert window.unchecked
    assert window.take_window() == "efghi"  # the partial unit joins the two before it


def test_window_of_one_unit_reads_only_that_unit() -> None:
    window = PolicyWindow(chunk_size=1, sliding_window=1)
    window.add("x")
    assert window.take_window() == "x"
    window.add("y")
    assert window.take_window() == "y"


def test_delta_text_includes_tool_call_pieces() -> None:
    delta = CompletionDelta(0, "a", 1, None, tool_calls=[ToolCallChunk(0, "call_1", "lookup", '{"q": 1}')])
    assert delta_text(delta) == 'alookup{"q": 1}'


class RecordingCheck:
    """Flags any window containing `banned`; records every window it was asked about."""

    def __init__(self, banned: str = "BAD") -> None:
        self.banned = banned
        self.windows: list[str] = []

    async def __call__(self, text: str) -> Verdict:
        self.windows.append(text)
        flagged = self.banned in text
        return Verdict(flagged, 1.0 if flagged else 0.0, "because")


class Source:
    """A generation that records how far it was read and whether it was closed (aborted)."""

    def __init__(self, pieces: list[tuple[int, str, str | None]]) -> None:
        self.pieces = pieces
        self.produced = 0
        self.closed = False

    async def run(self) -> AsyncGenerator[CompletionDelta]:
        try:
            for index, text, finish in self.pieces:
                self.produced += 1
                yield CompletionDelta(index, text, 1, finish)
        finally:
            self.closed = True


async def drain(stream) -> tuple[list[CompletionDelta], Exception | None]:
    got = []
    try:
        async for delta in stream:
            got.append(delta)
    except GuardrailViolation as exc:
        return got, exc
    return got, None


def words(*texts: str, finish: str = "stop") -> list[tuple[int, str, str | None]]:
    return [(0, text, None) for text in texts] + [(0, "", finish)]


async def test_clean_stream_is_released_whole_and_every_chunk_is_checked_before_release() -> None:
    check = RecordingCheck()
    source = Source(words("a ", "b ", "c ", "d ", "e "))
    got, error = await drain(guarded(source.run(), check, chunk_size=2, sliding_window=2))
    assert error is None
    assert [d.text for d in got] == ["a ", "b ", "c ", "d ", "e ", ""]
    assert got[-1].finish_reason == "stop"
    assert check.windows == ["a b ", "a b c d ", "c d e "]  # the final partial unit is checked too


async def test_release_waits_for_the_check_covering_the_chunk() -> None:
    check = RecordingCheck()
    source = Source(words("a", "b", "c"))
    stream = guarded(source.run(), check, chunk_size=2, sliding_window=1)
    first = await anext(stream)
    assert first.text == "a" and source.produced == 2 and check.windows == ["ab"]


async def test_violation_is_never_released_and_aborts_the_generation() -> None:
    check = RecordingCheck()
    source = Source(words("fine ", "text ", "now ", "BAD ", "more ", "tail ", "x ", "y "))
    got, error = await drain(guarded(source.run(), check, chunk_size=2, sliding_window=2))
    assert isinstance(error, GuardrailViolation) and error.reason == "because"
    assert [d.text for d in got] == ["fine ", "text ", ""]
    assert got[-1].finish_reason == "content_filter"
    assert "BAD" not in "".join(d.text for d in got)
    assert source.closed and source.produced == 4  # stopped reading at the violating unit


async def test_violation_split_across_units_is_seen_by_the_sliding_window() -> None:
    check = RecordingCheck(banned="BADWORD")
    source = Source(words("ok ", "BAD", "WORD", " ok"))
    got, error = await drain(guarded(source.run(), check, chunk_size=2, sliding_window=2))
    assert isinstance(error, GuardrailViolation)
    assert check.windows == ["ok BAD", "ok BADWORD ok"]
    assert [d.text for d in got] == ["ok ", "BAD", ""]  # the first unit passed alone; nothing after


async def test_violation_in_the_final_partial_unit_is_caught_before_the_end() -> None:
    check = RecordingCheck()
    source = Source(words("a ", "b ", "BAD"))
    got, error = await drain(guarded(source.run(), check, chunk_size=2, sliding_window=5))
    assert isinstance(error, GuardrailViolation)
    assert [d.text for d in got] == ["a ", "b ", ""]
    assert got[-1].finish_reason == "content_filter"


async def test_choices_are_windowed_apart_and_every_unfinished_one_is_cut() -> None:
    check = RecordingCheck()
    pieces = [(0, "x", None), (1, "y", None), (0, "x", None), (1, "BAD", None), (0, "", "stop"), (1, "", "stop")]
    got, error = await drain(guarded(Source(pieces).run(), check, chunk_size=2, sliding_window=1))
    assert isinstance(error, GuardrailViolation)
    assert check.windows == ["xx", "yBAD"]
    assert [(d.index, d.text, d.finish_reason) for d in got] == [
        (0, "x", None),
        (0, "x", None),
        (0, "", "content_filter"),
        (1, "", "content_filter"),
    ]


async def test_whole_answer_is_checked_once_before_anything_is_released() -> None:
    check = RecordingCheck()
    source = Source(words("a ", "b ", "c "))
    _, error = await drain(checked_whole(source.run(), check))
    assert error is None and check.windows == ["a b c "]
    with pytest.raises(GuardrailViolation):
        await drain_or_raise(checked_whole(Source(words("a ", "BAD")).run(), check))


async def drain_or_raise(stream) -> list[CompletionDelta]:
    return [delta async for delta in stream]
