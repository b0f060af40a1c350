"""Zero-leak guarding of a generation: output is held back until a check covering it has passed.

A check unit is `chunk_size` stream chunks (deltas that carry text) of one choice,
except the first units, which ramp up from `FIRST_UNIT_CHUNKS` (1, 2, 4, ... up to
`chunk_size`), so the first token waits for one check of one chunk, not for a
whole unit to be generated. Each check reads all the text since the last clean
check plus context before it: the latest `sliding_window` units, and at least
`MIN_CONTEXT_CHARS` of the text already checked, whatever the window settings,
so a violation split over small units is still read whole. Held deltas are
released only after the check that covers them passes; the last partial unit
(and the finishing delta) is checked before the stream ends. A whole
(non-streamed) answer is one unit, checked at the end.

A window of fewer than `MIN_JUDGED_WORDS` words is too short for the model to
judge (a stream's first words, "You can't", were flagged under policies they
do not touch). A model's flag on such a window does not cut: the unit stays open
and held, and grows (its due size doubles) until the window is long enough, and
then the check decides. A flag from explicit evidence (`Verdict.explicit`: a
name, value or dosage the policy names) cuts at any length, and the end of the
stream is always judged by the normal rule; nothing is released before a
passing check covers it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from server.engine import CompletionDelta
from server.guardrails.checker import Verdict
from server.guardrails.errors import GuardrailViolation

CONTENT_FILTER = "content_filter"
WHOLE_ANSWER = 2**31  # a unit no answer fills: checked once, when its choice finishes
FIRST_UNIT_CHUNKS = 1  # the first check covers one chunk; units then double up to chunk_size
MIN_CONTEXT_CHARS = 240  # about two sentences (~50 tokens) of checked text before the new text, at least
MIN_JUDGED_WORDS = 8  # a model's flag on a shorter window waits for more text (chosen on the dev sets)


@dataclass(slots=True)
class PolicyWindow:
    """The text of one choice in units; `window()` is what the next check reads."""

    chunk_size: int
    sliding_window: int
    min_context_chars: int = MIN_CONTEXT_CHARS
    first_unit: int = FIRST_UNIT_CHUNKS
    _done_units: deque[int] = field(init=False)  # lengths of the latest checked units
    _checked: str = field(init=False, default="")  # the tail of the checked text a context can need
    _current: list[str] = field(init=False, default_factory=list)
    _unit_chunks: int = field(init=False)

    def __post_init__(self) -> None:
        self._done_units = deque(maxlen=self.sliding_window - 1)
        self._unit_chunks = min(self.first_unit, self.chunk_size)

    def add(self, text: str) -> bool:
        """Count one chunk; True when it completes the current unit (a check is due)."""
        self._current.append(text)
        return len(self._current) >= self._unit_chunks

    @property
    def unchecked(self) -> bool:
        return bool(self._current)

    @property
    def context(self) -> str:
        """Checked text the next check reads before the current unit."""
        return self._checked

    def window(self) -> str:
        """What the next check reads: the context and the current unit."""
        return self._checked + "".join(self._current)

    def close_unit(self) -> None:
        """The check on `window()` passed: the current unit joins the context."""
        unit = "".join(self._current)
        window = self._checked + unit
        if self.sliding_window > 1:
            self._done_units.append(len(unit))
        self._checked = context_tail(window, sum(self._done_units), self.min_context_chars)
        self._current = []
        self._unit_chunks = min(self._unit_chunks * 2, self.chunk_size)

    def grow_unit(self) -> None:
        """The window was too short to judge: the current unit stays open until it has twice its chunks."""
        self._unit_chunks = max(1, len(self._current)) * 2


def too_short_to_judge(window: str, min_words: int) -> bool:
    return len(window.split()) < min_words


def context_tail(text: str, unit_chars: int, min_chars: int) -> str:
    """The end of `text` a next check reads first: the latest units (`unit_chars`), and at least
    `min_chars`, then cut at a word boundary so that the check reads no broken word."""
    if unit_chars >= min_chars:
        return text[len(text) - unit_chars :]
    if len(text) <= min_chars:
        return text
    tail = text[-min_chars:]
    space = tail.find(" ")
    return tail[space + 1 :] if 0 <= space < len(tail) // 2 else tail


def delta_text(delta: CompletionDelta) -> str:
    """What the client will read from a delta: its content and its tool-call pieces."""
    return delta.text + "".join((call.name or "") + call.arguments for call in delta.tool_calls)


async def guarded(
    deltas: AsyncGenerator[CompletionDelta],
    check: Callable[[str], Awaitable[Verdict]],
    chunk_size: int,
    sliding_window: int,
    *,
    min_context_chars: int = MIN_CONTEXT_CHARS,
    first_unit: int = FIRST_UNIT_CHUNKS,
    min_judged_words: int = MIN_JUDGED_WORDS,
) -> AsyncIterator[CompletionDelta]:
    """`deltas`, each released only once a passing check has covered it.

    On a violation the generation is closed (the engine request aborted), every
    unfinished choice gets a `content_filter` finishing delta, and
    `GuardrailViolation` is raised; the held, violating deltas are never yielded.
    """
    windows: dict[int, PolicyWindow] = {}
    held: dict[int, list[CompletionDelta]] = {}
    finished: set[int] = set()  # choices whose finishing delta the client has received

    async def passed(index: int, final: bool) -> bool:
        """Check the choice's window: True (the unit is closed) when it passes, False when a model's flag on a
        window too short to judge defers the decision (the unit stays open); a violation raises."""
        window = windows[index]
        text = window.window()
        verdict = await check(text)
        if verdict.flagged:
            if not final and not verdict.explicit and too_short_to_judge(text, min_judged_words):
                window.grow_unit()
                return False
            raise GuardrailViolation(verdict.reason, verdict.score)
        window.close_unit()
        return True

    try:
        try:
            async for delta in deltas:
                window = windows.setdefault(
                    delta.index, PolicyWindow(chunk_size, sliding_window, min_context_chars, first_unit)
                )
                held.setdefault(delta.index, []).append(delta)
                text = delta_text(delta)
                due = window.add(text) if text else False
                final = delta.finish_reason is not None
                if final:
                    due = window.unchecked
                if due:
                    due = await passed(delta.index, final)
                if due or not window.unchecked:  # nothing held that a check has not covered
                    for ready in held.pop(delta.index):
                        if ready.finish_reason is not None:
                            finished.add(ready.index)
                        yield ready
            for index, window in windows.items():  # a stream that ended without finishing deltas
                if window.unchecked:
                    await passed(index, final=True)
                for ready in held.pop(index, []):
                    yield ready
        finally:
            await deltas.aclose()  # aborts the engine request if it is still running
    except GuardrailViolation:
        for index in sorted(windows.keys() - finished):
            yield CompletionDelta(index=index, text="", new_tokens=0, finish_reason=CONTENT_FILTER)
        raise


def checked_whole(
    deltas: AsyncGenerator[CompletionDelta], check: Callable[[str], Awaitable[Verdict]]
) -> AsyncIterator[CompletionDelta]:
    """A non-streamed answer: every choice's whole text is one unit, checked before any of it is released."""
    return guarded(
        deltas, check, chunk_size=WHOLE_ANSWER, sliding_window=1, first_unit=WHOLE_ANSWER, min_judged_words=0
    )
