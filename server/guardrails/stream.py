"""Zero-leak guarding of a generation: output is held back until a check covering it has passed.

A check unit is `chunk_size` stream chunks (deltas that carry text) of one choice;
each check reads the latest `sliding_window` units together, so text split across
unit boundaries is still seen whole. Held deltas are released only after the check
that covers them passes; the last partial unit (and the finishing delta) is checked
before the stream ends. A whole (non-streamed) answer is one unit, checked at the end.
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


@dataclass(slots=True)
class PolicyWindow:
    """The text of one choice in units; `take_window()` is what the next check reads."""

    chunk_size: int
    sliding_window: int
    _done_units: deque[str] = field(init=False)
    _current: list[str] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self._done_units = deque(maxlen=self.sliding_window - 1)

    def add(self, text: str) -> bool:
        """Count one chunk; True when it completes the current unit (a check is due)."""
        self._current.append(text)
        return len(self._current) >= self.chunk_size

    @property
    def unchecked(self) -> bool:
        return bool(self._current)

    def take_window(self) -> str:
        """The latest `sliding_window` units, ending with the current one, which is then closed."""
        unit = "".join(self._current)
        window = "".join(self._done_units) + unit
        if self.sliding_window > 1:
            self._done_units.append(unit)
        self._current = []
        return window


def delta_text(delta: CompletionDelta) -> str:
    """What the client will read from a delta: its content and its tool-call pieces."""
    return delta.text + "".join((call.name or "") + call.arguments for call in delta.tool_calls)


async def guarded(
    deltas: AsyncGenerator[CompletionDelta],
    check: Callable[[str], Awaitable[Verdict]],
    chunk_size: int,
    sliding_window: int,
) -> AsyncIterator[CompletionDelta]:
    """`deltas`, each released only once a passing check has covered it.

    On a violation the generation is closed (the engine request aborted), every
    unfinished choice gets a `content_filter` finishing delta, and
    `GuardrailViolation` is raised; the held, violating deltas are never yielded.
    """
    windows: dict[int, PolicyWindow] = {}
    held: dict[int, list[CompletionDelta]] = {}
    finished: set[int] = set()  # choices whose finishing delta the client has received

    async def passed(index: int) -> bool:
        verdict = await check(windows[index].take_window())
        if verdict.flagged:
            raise GuardrailViolation(verdict.reason, verdict.score)
        return True

    try:
        try:
            async for delta in deltas:
                window = windows.setdefault(delta.index, PolicyWindow(chunk_size, sliding_window))
                held.setdefault(delta.index, []).append(delta)
                text = delta_text(delta)
                due = window.add(text) if text else False
                if delta.finish_reason is not None:
                    due = window.unchecked
                if due:
                    await passed(delta.index)
                if due or not window.unchecked:  # nothing held that a check has not covered
                    for ready in held.pop(delta.index):
                        if ready.finish_reason is not None:
                            finished.add(ready.index)
                        yield ready
            for index, window in windows.items():  # a stream that ended without finishing deltas
                if window.unchecked:
                    await passed(index)
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
    return guarded(deltas, check, chunk_size=WHOLE_ANSWER, sliding_window=1)
