"""Zero-leak stream guarding: windows, hold-back and release order (pure logic; the check is a parameter)."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import pytest

from server.engine import CompletionDelta, ToolCallChunk
from server.guardrails.checker import Verdict
from server.guardrails.errors import GuardrailViolation
from server.guardrails.stream import PolicyWindow, checked_whole, context_tail, delta_text, guarded

# The unit mechanics alone: no minimum context, no deferral of short windows (tested on their own below).
UNITS_ONLY = {"min_context_chars": 0, "min_judged_words": 0}


def take(window: PolicyWindow) -> str:
    """What the next check reads; the check passes, so the unit closes."""
    text = window.window()
    window.close_unit()
    return text


def test_window_checks_every_chunk_size_chunks_over_the_latest_units() -> None:
    window = PolicyWindow(chunk_size=2, sliding_window=3, min_context_chars=0, first_unit=2)
    due = [window.add(text) for text in "ab"]
    assert due == [False, True]
    assert take(window) == "ab"
    for text in "cdefgh":
        if window.add(text):
            last = take(window)
    assert last == "cdefgh"  # units cd, ef, gh: the oldest (ab) slid out
    assert not window.unchecked
    window.add("i")
    assert window.unchecked
    assert take(window) == "efghi"  # the partial unit joins the two before it


def test_window_of_one_unit_reads_only_that_unit() -> None:
    window = PolicyWindow(chunk_size=1, sliding_window=1, min_context_chars=0)
    window.add("x")
    assert take(window) == "x"
    window.add("y")
    assert take(window) == "y"


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
    got, error = await drain(guarded(source.run(), check, chunk_size=2, sliding_window=2, first_unit=2, **UNITS_ONLY))
    assert error is None
    assert [d.text for d in got] == ["a ", "b ", "c ", "d ", "e ", ""]
    assert got[-1].finish_reason == "stop"
    assert check.windows == ["a b ", "a b c d ", "c d e "]  # the final partial unit is checked too


async def test_release_waits_for_the_check_covering_the_chunk() -> None:
    check = RecordingCheck()
    source = Source(words("a", "b", "c"))
    stream = guarded(source.run(), check, chunk_size=2, sliding_window=1, first_unit=2, **UNITS_ONLY)
    first = await anext(stream)
    assert first.text == "a" and source.produced == 2 and check.windows == ["ab"]


async def test_violation_is_never_released_and_aborts_the_generation() -> None:
    check = RecordingCheck()
    source = Source(words("fine ", "text ", "now ", "BAD ", "more ", "tail ", "x ", "y "))
    got, error = await drain(guarded(source.run(), check, chunk_size=2, sliding_window=2, first_unit=2, **UNITS_ONLY))
    assert isinstance(error, GuardrailViolation) and error.reason == "because"
    assert [d.text for d in got] == ["fine ", "text ", ""]
    assert got[-1].finish_reason == "content_filter"
    assert "BAD" not in "".join(d.text for d in got)
    assert source.closed and source.produced == 4  # stopped reading at the violating unit


async def test_violation_split_across_units_is_seen_by_the_sliding_window() -> None:
    check = RecordingCheck(banned="BADWORD")
    source = Source(words("ok ", "BAD", "WORD", " ok"))
    got, error = await drain(guarded(source.run(), check, chunk_size=2, sliding_window=2, first_unit=2, **UNITS_ONLY))
    assert isinstance(error, GuardrailViolation)
    assert check.windows == ["ok BAD", "ok BADWORD ok"]
    assert [d.text for d in got] == ["ok ", "BAD", ""]  # the first unit passed alone; nothing after


async def test_violation_in_the_final_partial_unit_is_caught_before_the_end() -> None:
    check = RecordingCheck()
    source = Source(words("a ", "b ", "BAD"))
    got, error = await drain(guarded(source.run(), check, chunk_size=2, sliding_window=5, first_unit=2, **UNITS_ONLY))
    assert isinstance(error, GuardrailViolation)
    assert [d.text for d in got] == ["a ", "b ", ""]
    assert got[-1].finish_reason == "content_filter"


async def test_choices_are_windowed_apart_and_every_unfinished_one_is_cut() -> None:
    check = RecordingCheck()
    pieces = [(0, "x", None), (1, "y", None), (0, "x", None), (1, "BAD", None), (0, "", "stop"), (1, "", "stop")]
    got, error = await drain(
        guarded(Source(pieces).run(), check, chunk_size=2, sliding_window=1, first_unit=2, **UNITS_ONLY)
    )
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


def test_first_units_ramp_up_from_one_chunk_to_chunk_size() -> None:
    window = PolicyWindow(chunk_size=5, sliding_window=2, min_context_chars=0)
    sizes, count = [], 0
    for text in "abcdefghijklmnopqrstuvwxyz":
        count += 1
        if window.add(text):
            sizes.append(count)
            count = 0
            take(window)
    assert sizes == [1, 2, 4, 5, 5, 5]  # 26 chunks: 22 in units, 4 left unchecked


def test_context_keeps_the_latest_units_or_a_minimum_span_cut_at_a_word() -> None:
    assert context_tail("one two three four", unit_chars=5, min_chars=0) == " four"
    assert context_tail("one two three four", unit_chars=0, min_chars=0) == ""
    assert context_tail("one two three four", unit_chars=0, min_chars=100) == "one two three four"
    assert context_tail("one two three four", unit_chars=0, min_chars=12) == "three four"  # not "o three four"
    assert context_tail("one two three four", unit_chars=14, min_chars=12) == "two three four"


async def test_first_token_waits_for_one_check_of_one_chunk() -> None:
    check = RecordingCheck()
    source = Source(words("Hello", " there", " my", " friend", " how", " are", " you"))
    stream = guarded(source.run(), check, chunk_size=10, sliding_window=5)
    first = await anext(stream)
    assert first.text == "Hello" and source.produced == 1 and check.windows == ["Hello"]
    rest = [delta.text async for delta in stream]
    assert "".join(rest) == " there my friend how are you"


class PhraseCheck(RecordingCheck):
    """Flags a window holding the whole phrase, as a classifier reads meaning, not single tokens."""

    async def __call__(self, text: str) -> Verdict:
        self.windows.append(text)
        flagged = "you are a worthless idiot" in text
        return Verdict(flagged, 1.0 if flagged else 0.0, "because")


@pytest.mark.parametrize(("chunk_size", "sliding_window"), [(1, 1), (2, 4), (10, 5), (3, 1), (1, 100)])
async def test_every_check_reads_the_text_since_the_last_clean_check_and_context_before_it(
    chunk_size: int, sliding_window: int
) -> None:
    """At any window setting: a phrase flagged whole is never released, even one token per unit."""
    tokens = ["Sure", ".", " Honestly", ",", " you", " are", " a", " worth", "less", " idiot", ".", " Bye", "."]
    check = PhraseCheck()
    source = Source(words(*tokens))
    got, error = await drain(guarded(source.run(), check, chunk_size=chunk_size, sliding_window=sliding_window))
    assert isinstance(error, GuardrailViolation)
    released = "".join(d.text for d in got)
    assert "idiot" not in released and "Sure. Honestly, you are a worthless".startswith(released)
    checked = "".join(tokens)
    for window in check.windows:  # every window is one contiguous piece of the text, ending at a unit's end
        assert window in checked


async def test_whole_answer_is_still_one_check_at_the_end() -> None:
    check = RecordingCheck()
    _, error = await drain(checked_whole(Source(words("a ", "b ", "c ", "d ")).run(), check))
    assert error is None and check.windows == ["a b c d "]


class ShortWindowCheck(RecordingCheck):
    """A model that flags every window of fewer than `words` words (as the classifier did on a stream's first
    words), and windows holding `banned`; `explicit`: its flags come from the policy's named terms."""

    def __init__(self, words: int = 8, banned: str = "BAD", explicit: bool = False) -> None:
        super().__init__(banned)
        self.words = words
        self.explicit = explicit

    async def __call__(self, text: str) -> Verdict:
        self.windows.append(text)
        flagged = len(text.split()) < self.words or self.banned in text
        return Verdict(flagged, 0.99 if flagged else 0.01, "because", explicit=self.explicit and self.banned in text)


SENTENCE = ["You", " can't", " change", " the", " date", " online", ",", " but", " our", " team", " can", " help", "."]


async def test_a_models_flag_on_a_window_too_short_to_judge_waits_for_more_text() -> None:
    check = ShortWindowCheck(words=8)
    source = Source(words(*SENTENCE))
    stream = guarded(source.run(), check, chunk_size=10, sliding_window=5, min_judged_words=8)
    first = await anext(stream)
    # Nothing was released before a passing check covered it: the unit grew by doubling (1, 2, 4, 8 chunks:
    # 1, 2, 4, 7 words, each flagged and deferred), then the end of the stream was judged whole, and passed.
    assert check.windows == ["".join(SENTENCE[:n]) for n in (1, 2, 4, 8)] + ["".join(SENTENCE)]
    assert first.text == "You" and source.produced == len(SENTENCE) + 1
    rest = [delta.text async for delta in stream]
    assert "You" + "".join(rest) == "".join(SENTENCE)


async def test_explicit_evidence_cuts_a_short_window_at_once() -> None:
    check = ShortWindowCheck(words=0, banned="Expedia", explicit=True)
    source = Source(words("Try", " Expedia", " for", " cheaper", " flights", " next", " time", " please", "."))
    got, error = await drain(guarded(source.run(), check, chunk_size=10, sliding_window=5, min_judged_words=8))
    assert isinstance(error, GuardrailViolation)
    assert [d.text for d in got] == ["Try", ""] and got[-1].finish_reason == "content_filter"
    assert source.closed and source.produced == 3  # cut at the check of chunks 2-3, not deferred


async def test_a_model_flag_that_persists_once_the_window_is_long_enough_cuts() -> None:
    check = ShortWindowCheck(words=0, banned="idiot")
    tokens = ["You", " are", " such", " a", " complete", " and", " utter", " idiot", ",", " honestly", " you", " are"]
    got, error = await drain(guarded(Source(words(*tokens)).run(), check, chunk_size=10, sliding_window=5))
    assert isinstance(error, GuardrailViolation)
    assert "idiot" not in "".join(d.text for d in got)


async def test_a_short_answer_flagged_to_its_end_is_cut_by_the_normal_rule() -> None:
    check = ShortWindowCheck(words=8)
    source = Source(words("You", " idiot", "."))
    got, error = await drain(guarded(source.run(), check, chunk_size=1, sliding_window=1, min_judged_words=8))
    assert isinstance(error, GuardrailViolation)
    assert [d.text for d in got] == [""] and got[-1].finish_reason == "content_filter"  # nothing released


@pytest.mark.parametrize(("chunk_size", "sliding_window"), [(1, 1), (2, 4), (10, 5)])
async def test_deferral_never_releases_text_a_passing_check_did_not_cover(chunk_size: int, sliding_window: int) -> None:
    """A stream of model flags on short windows, then a violation: what was released had passed a check."""
    check = ShortWindowCheck(words=8, banned="BAD")
    tokens = SENTENCE + SENTENCE + [" Then", " BAD", " things", "."]
    got, error = await drain(guarded(Source(words(*tokens)).run(), check, chunk_size, sliding_window))
    assert isinstance(error, GuardrailViolation)
    released = "".join(d.text for d in got)
    assert "BAD" not in released and "".join(tokens).startswith(released)
    # The released text ends where a passing check's window ended, and that check read enough words.
    passing = [window for window in check.windows if len(window.split()) >= 8 and "BAD" not in window]
    assert released and any(released.endswith(window) for window in passing)


def test_window_of_a_deferred_unit_keeps_its_text_and_grows() -> None:
    window = PolicyWindow(chunk_size=10, sliding_window=5)
    assert window.add("You")
    window.grow_unit()
    assert window.add(" can't")  # due again at twice its chunks
    window.grow_unit()
    assert [window.add(text) for text in (" do", " it")] == [False, True]
    assert window.window() == "You can't do it" and window.unchecked
    window.close_unit()
    assert not window.unchecked and window.context == "You can't do it"
